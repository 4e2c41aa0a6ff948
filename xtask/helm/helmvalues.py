"""What render.py and lint.py share: their command line for values overrides, read with
Helm's own YAML reader and merged as `helm -f a.yaml -f b.yaml` merges them, and errors as one
line naming what they are about."""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

import helm_python as helm


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CHART, the release's namespace, and values overrides in command-line order."""
    parser.add_argument("chart", help="the chart's folder")
    parser.add_argument("--namespace", default="default", help="the release's namespace")
    parser.add_argument(
        "-f",
        "--values",
        dest="overrides",
        action="append",
        default=[],
        type=lambda path: ("file", path),
        metavar="FILE",
        help="a YAML file of values overrides ('-' for standard input); repeatable",
    )
    parser.add_argument(
        "--values-yaml",
        dest="overrides",
        action="append",
        type=lambda text: ("text", text),
        metavar="YAML",
        help="values overrides as YAML text; repeatable, merged in order with --values",
    )


def one_line(text: str) -> str:
    """Helm's multi-line messages (a template's error and its context) on one line."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def fail(script: str, message: str) -> NoReturn:
    print(f"{script}: {one_line(message)}", file=sys.stderr)
    sys.exit(1)


def read_overrides(script: str, overrides: list[tuple[str, str]]) -> dict[str, Any] | None:
    """The overrides merged in order (later wins; maps merge key by key), or None for none."""
    merged: dict[str, Any] | None = None
    for i, (kind, source) in enumerate(overrides):
        if kind == "file":
            name = "standard input" if source == "-" else source
            try:
                if source == "-":
                    text = sys.stdin.read()
                else:
                    with open(source, encoding="utf-8") as f:
                        text = f.read()
            except (OSError, UnicodeDecodeError) as e:
                fail(script, f"{name}: {e.strerror if isinstance(e, OSError) else e}")
        else:
            name, text = f"--values-yaml #{i + 1}", source
        try:
            values = helm.values_from_yaml(text) if text.strip() else {}
        except helm.HelmError as e:
            fail(script, f"{name}: {e}")
        if not isinstance(values, dict):
            fail(script, f"{name}: values must be a YAML mapping")
        merged = merge(merged or {}, values)
    return merged


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Helm's merge of one values file over the previous ones: maps merge key by key, anything
    else replaces (a null stays, and later deletes the chart's default)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out
