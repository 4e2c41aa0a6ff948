"""Lints a Helm chart as `helm lint --strict` does, with Helm v4's own linter
(helm-python-sdk), and fails on any warning: the linter's own, and any warning Helm prints
while it renders the chart (such as an override whose type does not match the chart's value).

    lint.py CHART [--namespace NS] [-f FILE]... [--values-yaml YAML]...

Prints each finding as `[SEVERITY] path: message` and a summary line; exit status 1 when any
finding is a warning or an error, or the chart cannot be linted."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import helm_python as helm

from helmvalues import add_arguments, fail, one_line, read_overrides

SCRIPT = "lint.py"
SEVERITY = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}


def lint_capturing_stderr(chart: str, values, namespace: str) -> tuple[dict, list[str]]:
    """helm.lint, with what Helm writes to standard error (its warnings go there, from Go)
    captured as lines."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            report = helm.lint(chart, values, strict=True, namespace=namespace)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        printed = captured.read().decode("utf-8", errors="replace").splitlines()
    return report, [line for line in printed if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(prog=SCRIPT, description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args()

    values = read_overrides(SCRIPT, args.overrides)
    try:
        report, printed = lint_capturing_stderr(args.chart, values, args.namespace)
    except helm.HelmError as e:
        fail(SCRIPT, f"{args.chart}: {e}")
    failed = False
    for message in report.get("messages", []):
        severity = int(message.get("severity", 0))
        failed |= severity >= 2 or severity == 0
        name = SEVERITY.get(severity, str(severity))
        print(f"[{name}] {message.get('path', '')}: {one_line(message.get('error', ''))}")
    for line in printed:
        failed = True
        print(f"[WARNING] {args.chart}: Helm printed: {line}")
    # Errors that are no finding of a linted chart (a folder that is no chart).
    found = {one_line(m.get("error", "")) for m in report.get("messages", [])}
    for error in report.get("errors") or []:
        failed = True
        if one_line(error) not in found:
            print(f"[ERROR] {args.chart}: {one_line(error)}")
    if not report.get("total_charts_linted"):
        failed = True
    print(f"{args.chart}: {'failed' if failed else 'passed'} helm lint --strict")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
