"""The monitoring kept in the repository stays true to the code: every metric the Grafana dashboard's PromQL
names is one the bot or a worker exports (as Prometheus exposes it: counters with `_total`, histograms with
`_bucket`, `_sum`, `_count`), every animabot metric has a panel, and the compose profile wires Prometheus to
the metrics port and Grafana to the dashboard."""

import json
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from engine.queue.metrics import Metrics, process_registry

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "docs" / "grafana" / "animabot.json"

# PromQL words that are not metric names (functions and aggregations are told by the "(" that follows them).
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
            "offset", "inf", "nan"}
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "summary": ("", "_sum", "_count", "_created"), "gauge": ("",), "info": ("_info",),
            "stateset": ("",), "gaugehistogram": ("_bucket", "_gsum", "_gcount"), "unknown": ("",)}


def exposed_names(registry: CollectorRegistry) -> set[str]:
    """The sample names Prometheus scrapes from `registry`, labelled metrics with no sample yet included."""
    return {family.name + suffix for family in registry.collect() for suffix in SUFFIXES[family.type]}


def exported() -> set[str]:
    return exposed_names(Metrics().registry) | exposed_names(process_registry())   # the bot's, a worker's


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)          # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)                     # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)                    # ranges, $__rate_interval
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)   # label lists
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if expr[match.end():].lstrip().startswith("(") or match[0] in KEYWORDS:
            continue
        names.add(match[0])
    return names


def panels(items: list[dict]) -> list[dict]:
    found = []
    for item in items:
        found.append(item)
        found += panels(item.get("panels", []))   # a collapsed row keeps its panels inside it
    return found


def expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in panels(dashboard["panels"]) for t in p.get("targets", [])]
    exprs += [v["query"] for v in dashboard.get("templating", {}).get("list", [])
              if v.get("type") == "query" and isinstance(v.get("query"), str)]
    return exprs


def test_the_promql_reader_finds_metric_names_and_nothing_else():
    expr = ('histogram_quantile(0.95, sum by (le, preset) (rate(animabot_job_wait_seconds_bucket{state!="done",'
            'x=~"a|b"}[$__rate_interval]))) / on (preset) group_left sum(animabot_jobs_total offset 1h) * 60')
    assert metric_names(expr) == {"animabot_job_wait_seconds_bucket", "animabot_jobs_total"}


def test_every_metric_the_dashboard_names_is_exported():
    exprs = expressions()
    assert len(exprs) >= 10
    names = exported()
    for expr in exprs:
        unknown = metric_names(expr) - names
        assert not unknown, f"{expr!r} names {sorted(unknown)}, which no process exports"


def test_every_animabot_metric_has_a_panel():
    referenced = set().union(*map(metric_names, expressions()))
    for family in Metrics().registry.collect():
        if family.name.startswith("animabot_"):
            exposed = {family.name + s for s in SUFFIXES[family.type]}
            assert exposed & referenced, f"{family.name} is on no panel"
    # The latencies as quantiles, not only as means.
    assert {"animabot_job_wait_seconds_bucket", "animabot_job_duration_seconds_bucket"} <= referenced


def test_the_dashboard_is_grafana_json_with_one_data_source_variable():
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] == "animabot" and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in panels(dashboard["panels"])]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard["panels"]):
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"] and all(t["expr"] for t in panel["targets"])
    (variable,) = dashboard["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == ("datasource", "datasource", "prometheus")


def test_the_monitoring_profile_scrapes_the_metrics_port_and_provisions_the_dashboard():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    services = compose["services"]
    port = int(services["bot"]["environment"]["ANIMABOT_METRICS__PORT"])
    assert int(services["worker"]["environment"]["ANIMABOT_METRICS__PORT"]) == port
    assert "/readyz" in " ".join(services["bot"]["healthcheck"]["test"])
    assert "/healthz" in " ".join(services["worker"]["healthcheck"]["test"])
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]
        for volume in services[name]["volumes"]:
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), volume
    assert "profiles" not in services["bot"] and "profiles" not in services["worker"]

    prometheus = yaml.safe_load((ROOT / "docs" / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    scraped = {sd["names"][0]: sd["port"] for job in prometheus["scrape_configs"] for sd in job["dns_sd_configs"]}
    assert scraped == {"bot": port, "worker": port}

    grafana = services["grafana"]
    mounted = dict(volume.split(":")[:2] for volume in grafana["volumes"])   # source -> place in the container
    provider = yaml.safe_load((ROOT / "docs/grafana/provisioning/dashboards/animabot.yml").read_text())
    folder = provider["providers"][0]["options"]["path"]
    assert mounted["./docs/grafana/animabot.json"] == f"{folder}/animabot.json"
    datasource = yaml.safe_load((ROOT / "docs/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
