"""deploy/prometheus/echoseen-alerts.yml: valid rules that use only metrics the daemons export."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from capture.metrics import CaptureMetrics
from echoseen import __version__
from replicator.metrics import ReplicatorMetrics

RULES_PATH = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "echoseen-alerts.yml"
# Series that Prometheus itself records for every scrape target.
SCRAPE_SERIES = {"up"}
SELECTOR = re.compile(r"\b(echoseen_[a-z0-9_]+)(\{[^}]*\})?")
LABEL_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def exported_series(metrics: object) -> dict[str, set[str]]:
    """Map every series name of a daemon's metrics object to its label names.

    Read from the metric objects rather than from samples, because a labelled
    metric exports no sample before its first use.
    """
    series: dict[str, set[str]] = {}
    for metric in vars(metrics).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        # NOTE: prometheus_client has no public accessor for a metric's name, type and label names.
        labels = set(metric._labelnames)
        for suffix in SUFFIXES[metric._type]:
            series[metric._name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    # echoseen_build_info is registered by echoseen.health, not kept as an attribute.
    for family in metrics.registry.collect():
        for sample in family.samples:
            series.setdefault(sample.name, set(sample.labels))
    return series


@pytest.fixture(scope="module")
def rules() -> list[dict]:
    document = yaml.safe_load(RULES_PATH.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def daemon_series() -> dict[str, set[str]]:
    series = exported_series(CaptureMetrics())
    series.update(exported_series(ReplicatorMetrics()))
    return series


def test_rules_file_structure():
    document = yaml.safe_load(RULES_PATH.read_text())
    assert [group["name"] for group in document["groups"]] == ["echoseen-replicator", "echoseen-capture"]
    names = [rule["alert"] for group in document["groups"] for rule in group["rules"]]
    assert len(names) == len(set(names)), "alert names must be unique"


def test_rules_have_severity_and_summary(rules):
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_rules_metrics_exist(rules, daemon_series):
    used = set()
    for rule in rules:
        for name, _ in SELECTOR.findall(rule["expr"]):
            used.add(name)
            assert name in daemon_series, f"{rule['alert']} uses {name}, which neither daemon exports"
    assert len(used) >= 10


def test_rules_label_matchers_exist(rules, daemon_series):
    for rule in rules:
        for name, selector in SELECTOR.findall(rule["expr"]):
            for label, _ in LABEL_MATCHER.findall(selector):
                assert label in daemon_series[name], f"{rule['alert']}: {name} has no label {label!r}"


def test_rules_other_series_are_scrape_series(rules):
    for rule in rules:
        expr = re.sub(r"\{[^}]*\}", "", rule["expr"])
        selectors = set(re.findall(r"\b(up)\b", expr))
        assert selectors <= SCRAPE_SERIES


def test_rules_cover_operations(rules):
    expressions = "\n".join(rule["expr"] for rule in rules)
    for series in ("echoseen_replicator_consumer_lag_seconds", "echoseen_capture_oldest_open_gap_age_seconds",
                   "echoseen_replicator_dead_lettered_records_total", "echoseen_capture_heartbeat_age_seconds",
                   "echoseen_replicator_stopped_partitions", "echoseen_capture_watermark_age_seconds",
                   'up{job="echoseen-replicator"}', 'up{job="echoseen-capture"}'):
        assert series in expressions


def test_rules_promtool_check():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    result = subprocess.run([promtool, "check", "rules", str(RULES_PATH)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("metrics_class", "component"), [(CaptureMetrics, "capture"),
                                                          (ReplicatorMetrics, "replicator")])
def test_build_info_labels(metrics_class, component):
    registry = metrics_class().registry
    assert registry.get_sample_value("echoseen_build_info",
                                     {"version": __version__, "component": component}) == 1.0
