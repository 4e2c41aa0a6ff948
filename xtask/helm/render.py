"""Renders a Helm chart offline as `helm template` does, with Helm v4's own engine
(helm-python-sdk): no cluster, no helm binary.

    render.py CHART [--release NAME] [--namespace NS] [-f FILE]... [--values-yaml YAML]...
              [--json]

Prints the documents as `helm template` prints them: split at `---`, in Helm's install order by
kind, each after `---` and a `# Source:` line. With --json, prints
{"documents": [{"source", "kind", "text"}], "notes": "..."} instead (NOTES.txt rendered), which
`cargo xtask manifests` and Sonde's tests read. Errors are one line on standard error, exit
status 1."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any

import helm_python as helm

from helmvalues import add_arguments, fail, read_overrides

SCRIPT = "render.py"

# Helm's install order by kind (releaseutil.InstallOrder); other kinds come after, by kind.
INSTALL_ORDER = [
    "PriorityClass",
    "Namespace",
    "NetworkPolicy",
    "ResourceQuota",
    "LimitRange",
    "PodSecurityPolicy",
    "PodDisruptionBudget",
    "ServiceAccount",
    "Secret",
    "SecretList",
    "ConfigMap",
    "StorageClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleList",
    "ClusterRoleBinding",
    "ClusterRoleBindingList",
    "Role",
    "RoleList",
    "RoleBinding",
    "RoleBindingList",
    "Service",
    "DaemonSet",
    "Pod",
    "ReplicationController",
    "ReplicaSet",
    "Deployment",
    "HorizontalPodAutoscaler",
    "StatefulSet",
    "Job",
    "CronJob",
    "IngressClass",
    "Ingress",
    "APIService",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
]

# Helm's document separator (releaseutil.SplitManifests), with Go's \s spelled out.
SEPARATOR = re.compile(r"(?:^|[\t\n\f\r ]*\n)---[\t\n\f\r ]*")
HOOK = "helm.sh/hook"


def split(text: str) -> list[str]:
    """A template's output split into documents as Helm splits it (leading space trimmed)."""
    return [d.lstrip() for d in SEPARATOR.split(text.lstrip()) if d != ""]


def documents(files: dict[str, str], chart_name: str) -> list[dict[str, str]]:
    """The rendered templates as Helm orders them: files by path, documents in file order,
    then a stable sort by kind. Partials and empty files are skipped."""
    docs = []
    for path in sorted(files):
        text = files[path]
        if os.path.basename(path).startswith("_") or path == f"{chart_name}/templates/NOTES.txt":
            continue
        if text.strip() == "":
            continue
        for doc in split(text):
            try:
                head: Any = helm.values_from_yaml(doc)
            except helm.HelmError as e:
                fail(SCRIPT, f"YAML parse error on {path}: {e}")
            metadata = head.get("metadata") if isinstance(head.get("metadata"), dict) else {}
            annotations = metadata.get("annotations") or {}
            if isinstance(annotations, dict) and HOOK in annotations:
                fail(SCRIPT, f"{path}: Helm hooks ({HOOK}) are not supported here")
            docs.append({"source": path, "kind": str(head.get("kind") or ""), "text": doc})

    def order(doc: dict[str, str]) -> tuple[int, str]:
        kind = doc["kind"]
        if kind in INSTALL_ORDER:
            return (INSTALL_ORDER.index(kind), "")
        return (len(INSTALL_ORDER), kind)

    return sorted(docs, key=order)


def stream(docs: list[dict[str, str]]) -> str:
    """`helm template`'s output for the documents."""
    out = "".join(f"---\n# Source: {d['source']}\n{d['text']}\n" for d in docs)
    return out.strip() + "\n" if out.strip() else ""


def main() -> None:
    parser = argparse.ArgumentParser(prog=SCRIPT, description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--release", default="release-name", help="the release's name")
    parser.add_argument("--json", action="store_true", help="documents and notes as JSON")
    args = parser.parse_args()

    values = read_overrides(SCRIPT, args.overrides)
    try:
        helm.validate_release_name(args.release)
    except helm.HelmError as e:
        fail(SCRIPT, f"--release {args.release}: {e}")
    try:
        with helm.Chart.load(args.chart) as chart:
            chart_name = chart.name
            files = chart.render(
                values,
                name=args.release,
                namespace=args.namespace,
                revision=1,
                is_install=True,
            )
    except helm.HelmError as e:
        fail(SCRIPT, f"{args.chart}: {e}")
    docs = documents(files, chart_name)
    if args.json:
        notes = files.get(f"{chart_name}/templates/NOTES.txt", "")
        json.dump({"documents": docs, "notes": notes}, sys.stdout)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(stream(docs))


if __name__ == "__main__":
    main()
