"""observability/grafana/avatar-chat.json queries only metrics and measures that exist.

The service's metric names come from avatarchat/metrics.py (its Histogram/Gauge/Counter calls),
the measure label values from TURN_MEASURES, and Ray Serve's names from the installed Ray's
source, so a renamed metric on either side fails here. Ray exports every metric with the prefix
``ray_``; histograms as ``_bucket``/``_sum``/``_count``, counters with ``_total``.
"""

import ast
import importlib.util
import json
import re
from pathlib import Path

import yaml

from avatarchat.metrics import TURN_MEASURES

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "observability/grafana/avatar-chat.json"
PROMETHEUS = ROOT / "observability/prometheus.yml"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# PromQL words that look like metric names; grouping label lists are removed before this applies
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
             "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)            # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)                       # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)                      # range selectors
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][\w:]*", expr):
        name = match.group()
        if name.lower() in _KEYWORDS or expr[match.end():].lstrip().startswith("("):
            continue
        names.add(name)
    return names


def measure_values(expr: str) -> list[str]:
    """Every measure a ``measure="..."`` or ``measure=~"a|b"`` matcher names."""
    values = []
    for op, value in re.findall(r'\bmeasure\s*(=~|!~|!=|=)\s*"([^"]*)"', expr):
        values.extend(value.split("|") if op in ("=~", "!~") else [value])
    return values


def exported(name: str, kind: str) -> set[str]:
    """The series names Ray's Prometheus export gives a metric defined as ``name``."""
    name = f"ray_{name}"
    if kind == "Histogram":
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    if kind == "Counter":
        return {name if name.endswith("_total") else f"{name}_total"}
    return {name}


def service_metrics() -> dict[str, str]:
    """name -> Histogram/Gauge/Counter, from the metric constructors in avatarchat/metrics.py."""
    tree = ast.parse((ROOT / "avatarchat/metrics.py").read_text())
    found = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in ("Histogram", "Gauge", "Counter")
                and node.args and isinstance(node.args[0], ast.Constant)):
            found[node.args[0].value] = node.func.id
    return found


def serve_metrics() -> dict[str, str]:
    """name -> kind for the metrics the installed Ray Serve defines (``serve_num_{protocol_name}_...``
    for both protocols)."""
    spec = importlib.util.find_spec("ray")  # finds the package without importing it
    assert spec and spec.submodule_search_locations, "ray is not installed"
    serve_dir = Path(next(iter(spec.submodule_search_locations))) / "serve"
    pattern = re.compile(r'\b(Counter|Gauge|Histogram)\(\s*(?:name\s*=\s*)?f?"(serve_[\w{}]+)"')
    found = {}
    for path in serve_dir.rglob("*.py"):
        if "tests" in path.parts:
            continue
        for kind, name in pattern.findall(path.read_text(errors="replace")):
            for protocol in ("http", "grpc"):
                found[name.replace("{protocol_name}", protocol)] = kind
    return found


def allowed_names() -> set[str]:
    names = set()
    for defined in (service_metrics(), serve_metrics()):
        for name, kind in defined.items():
            names |= exported(name, kind)
    return names


def load() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # panels inside collapsed rows
    return out


def exprs(dashboard: dict) -> list[str]:
    return [t["expr"] for p in all_panels(dashboard) for t in p.get("targets", [])]


def variable_queries(dashboard: dict) -> list[str]:
    out = []
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            out.append(re.fullmatch(r"label_values\((.*),\s*\w+\)", query).group(1))
    return out


def test_dashboard_is_importable_anywhere():
    dashboard = load()
    assert dashboard["uid"] == "avatar-chat"
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"] == DATASOURCE, var["name"]


def test_every_panel_has_a_unique_id_and_a_query():
    panels = all_panels(load())
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), ids
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"] == DATASOURCE, panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"]), panel["title"]


def test_every_query_names_an_exported_metric():
    allowed = allowed_names()
    used = set()
    for expr in exprs(load()) + variable_queries(load()):
        names = metric_names(expr)
        assert names, expr
        assert names <= allowed, (sorted(names - allowed), expr)
        used |= names
    # and every metric of the service is on the dashboard
    for name, kind in service_metrics().items():
        assert used & exported(name, kind), name


def test_every_measure_is_one_the_service_emits():
    seen = set()
    for expr in exprs(load()):
        for value in measure_values(expr):
            assert value in TURN_MEASURES, (value, expr)
            seen.add(value)
    assert {"voice_to_voice", "asr", "llm_first_token", "tts_first_audio", "avatar_first_frame",
            "end_of_turn_decision"} <= seen


def test_the_checks_catch_a_wrong_name_or_measure():
    allowed = allowed_names()
    assert "ray_avatar_chat_turn_seconds_bucket" in allowed
    assert "ray_serve_deployment_processing_latency_ms_bucket" in allowed
    assert "avatar_chat_turn_seconds_bucket" not in allowed  # without Ray's prefix
    assert "ray_avatar_chat_turn_seconds" not in allowed     # a histogram has no bare series
    expr = ('histogram_quantile(0.95, sum by (le, measure) (rate('
            'ray_avatar_chat_turn_second_bucket{measure=~"asr|tts_first_audoi"}[$__rate_interval])))')
    assert metric_names(expr) == {"ray_avatar_chat_turn_second_bucket"}
    assert [v for v in measure_values(expr) if v not in TURN_MEASURES] == ["tts_first_audoi"]


def test_prometheus_scrapes_the_port_serve_sh_sets():
    port = re.search(r"AVATAR_CHAT_METRICS_PORT:-(\d+)", (ROOT / "scripts/serve.sh").read_text()).group(1)
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["avatar-chat"]["static_configs"][0]["targets"] == [f"127.0.0.1:{port}"]
