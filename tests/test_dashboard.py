"""The Grafana dashboard and docs/operations.md name only metrics the server defines, and the
docs name every one of them: neither can drift from observability/metrics.py."""

from __future__ import annotations

import json
import pathlib
import re

import pytest

from imageloc.server.app import build_server
from imageloc.server.config import Settings

from signing import Issuer
from support import migrate

ROOT = pathlib.Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "imageloc.json"
OPERATIONS = ROOT / "docs" / "operations.md"
#: Metric names as PromQL spells them: ours all start with these.
METRIC = re.compile(r"\b((?:grpc_server|imageloc)_[a-z0-9_]+)\b")
#: Prometheus's own series, which any scrape has.
PROMETHEUS_OWN = {"up"}


def defined_series(tmp_path: pathlib.Path) -> set[str]:
    """Every series name a server with every part on (jwt, the Glance endpoint) defines."""
    database_url = f"sqlite:///{tmp_path}/dashboard.db"
    migrate(database_url)
    issuer = Issuer.create(tmp_path / "idp", issuer="imageloc-test", audience="imageloc")
    server = build_server(
        Settings(
            listen="127.0.0.1:0",
            database_url=database_url,
            metrics_listen="127.0.0.1:0",
            glance_listen="127.0.0.1:0",
            **issuer.trusted_by(),
        )
    )
    try:
        names: set[str] = set()
        for family in server.metrics.registry.collect():
            if family.type == "counter":
                names.add(f"{family.name}_total")
            elif family.type == "histogram":
                names.update(f"{family.name}{end}" for end in ("_bucket", "_sum", "_count"))
            else:
                names.add(family.name)
        return names
    finally:
        server.stop(None)


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    return defined_series(tmp_path_factory.mktemp("metrics"))


def _expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert panels, "the dashboard has no panels"
    expressions = [target["expr"] for panel in panels for target in panel["targets"]]
    assert all(expressions)
    return expressions


def test_every_dashboard_query_reads_a_metric_the_server_defines(series: set[str]) -> None:
    for expression in _expressions():
        used = set(METRIC.findall(expression))
        assert used, expression
        assert used <= series, (expression, sorted(used - series))


def test_the_dashboard_shows_what_the_issue_asks(series: set[str]) -> None:
    used = {name for expression in _expressions() for name in METRIC.findall(expression)}
    for wanted in (
        "grpc_server_handled_total",
        "grpc_server_handling_seconds_bucket",
        "imageloc_refusals_total",
        "imageloc_store_commit_batch_size_bucket",
        "imageloc_watch_lag_revisions",
        "imageloc_health_serving",
    ):
        assert wanted in used, wanted


def test_docs_operations_names_every_metric_and_no_other(series: set[str]) -> None:
    text = OPERATIONS.read_text()
    families = {re.sub(r"_(bucket|sum|count)$", "", name) for name in series}
    missing = sorted(name for name in families if name not in text)
    assert missing == []
    named = set(METRIC.findall(text)) - PROMETHEUS_OWN
    unknown = sorted(name for name in named if name not in series and name not in families)
    assert unknown == []
