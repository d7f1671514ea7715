"""Write prometheusrule.yaml from ../prometheus/rules.yml.

The Prometheus Operator wants rules inside a PrometheusRule object, while
docker-compose's Prometheus and `promtool test rules` want a plain rule file.
rules.yml is the one to edit; run this afterwards:

    python deploy/k8s/render_prometheusrule.py

tests/unit/test_deploy_manifests.py fails while the two disagree.
"""

from __future__ import annotations

from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE.parent / "prometheus" / "rules.yml"
OUTPUT = HERE / "prometheusrule.yaml"

HEADER = """\
# Generated from deploy/prometheus/rules.yml by deploy/k8s/render_prometheusrule.py;
# edit rules.yml and re-run the script instead of editing this file.
# `release: prometheus` matches kube-prometheus-stack's default ruleSelector.
"""


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (long PromQL) as `|` blocks, readable in review."""


def _string(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_BlockDumper.add_representer(str, _string)


def render(rules: dict) -> dict:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "stream-detector",
            "labels": {"app.kubernetes.io/name": "stream-detector", "release": "prometheus"},
        },
        "spec": {"groups": rules["groups"]},
    }


def main() -> None:
    rules = yaml.safe_load(RULES.read_text())
    body = yaml.dump(render(rules), Dumper=_BlockDumper, sort_keys=False, width=100,
                     allow_unicode=True)
    OUTPUT.write_text(HEADER + body)
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
