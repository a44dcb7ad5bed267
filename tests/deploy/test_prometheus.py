"""Prometheus kit: promtool on the config, the rules and a live server's /metrics; alert unit tests;
the dashboard's and the alerts' metrics exported by a real server; a real Prometheus scraping it."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import yaml

from tests.deploy.conftest import DEPLOY
from tests.deploy.promql import alert_exprs, dashboard, dashboard_exprs, metric_names, variable_metrics

PROM = DEPLOY / "prometheus"


def run(*cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


def test_config_and_rules_pass_promtool(promtool):
    done = run(promtool, "check", "config", str(PROM / "prometheus.yml"))
    assert done.returncode == 0 and "SUCCESS: 1 rule files found" in done.stdout, done.stdout + done.stderr
    done = run(promtool, "check", "rules", str(PROM / "alerts.yml"))
    assert done.returncode == 0 and f"SUCCESS: {len(alert_exprs())} rules found" in done.stdout, (
        done.stdout + done.stderr
    )
    assert set(alert_exprs()) == {
        "EnclaveDown",
        "EnclaveHighErrorRate",
        "EnclaveSlowFirstToken",
        "EnclaveQueueSaturated",
        "EnclaveShedding",
        "EnclavePromptLengthDrift",
        "EnclaveContextLimitHits",
        "EnclaveFeedbackStoreFailing",
    }


def test_alert_unit_tests(promtool):
    done = run(promtool, "test", "rules", "alerts.test.yml", cwd=PROM)
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr
    tested = {
        t["alertname"]
        for case in yaml.safe_load((PROM / "alerts.test.yml").read_text())["tests"]
        for t in case["alert_rule_test"]
    }
    assert tested == set(alert_exprs()), "every alert has a promtool unit test"


def test_live_metrics_pass_promtool_check_metrics(promtool, metrics_text):
    done = run(promtool, "check", "metrics", input=metrics_text)
    assert done.returncode == 0 and done.stdout.strip() == "" and done.stderr.strip() == "", done.stdout + done.stderr


def test_alerts_and_dashboard_read_only_exported_metrics(exported):
    available = exported | {"up"}
    for name, expr in {**alert_exprs(), **dashboard_exprs()}.items():
        names = metric_names(expr)
        assert names, f"{name}: no metric found in {expr}"
        assert names <= available, f"{name} reads {sorted(names - available)}, which the server does not export"
    assert variable_metrics() <= available


def test_metric_name_parser_is_not_fooled():
    assert metric_names(
        'sum by (le, model) (rate(a_bucket{code=~"X|Y"}[5m] offset 7d)) / on (model) b_total > 0.5'
    ) == {"a_bucket", "b_total"}
    assert metric_names("histogram_quantile(0.99, sum by (le) (rate(x_bucket[5m])))") == {"x_bucket"}


def test_dashboard_covers_what_operators_watch():
    titles = " | ".join(p["title"] for p in dashboard()["panels"])
    for word in (
        "Time to first token",
        "Inter-token",
        "End-to-end",
        "tokens / s",
        "waiting",
        "error",
        "adapter",
        "prompt length",
        "context window",
        "by API",
    ):
        assert word.lower() in titles.lower(), word
    exprs = " ".join(dashboard_exprs().values())
    for q in ("histogram_quantile(0.5", "histogram_quantile(0.9", "histogram_quantile(0.99"):
        assert q in exprs
    datasources = {t["datasource"]["uid"] for p in dashboard()["panels"] for t in p.get("targets", [])}
    provisioned = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())[
        "datasources"
    ]
    assert datasources == {d["uid"] for d in provisioned}


def test_dashboard_queries_are_valid_promql(promtool, tmp_path):
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:q{i}", "expr": e} for i, e in enumerate(dashboard_exprs().values())],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    done = run(promtool, "check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(port: int, path: str, **params) -> dict:
    url = f"http://127.0.0.1:{port}/api/v1/{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _until(fn, seconds: float):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        value = fn()
        if value:
            return value
        time.sleep(0.5)
    return fn()


def test_real_prometheus_scrapes_the_server(prometheus, live, tmp_path):
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROM / "alerts.yml")]
    config["scrape_configs"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{live.metrics_port}"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = _free_port()
    proc = subprocess.Popen(
        [
            prometheus,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        result = _until(lambda: _query(port, 'enclave_requests_total{code="OK"}'), 60)
        assert result, proc.stdout.read() if proc.poll() is not None else "no sample after 60 s"
        by_model: dict[str, float] = {}  # summed over finished_reason
        for r in result:
            if r["metric"].get("adapter", "") == "":
                by_model[r["metric"]["model"]] = by_model.get(r["metric"]["model"], 0.0) + float(r["value"][1])
        assert by_model["tiny-onnx"] == 2.0  # a unary call and a stream on the default model
        assert any(r["metric"].get("adapter") == "facts" for r in result)
        assert _query(port, 'up{job="enclave"}')[0]["value"][1] == "1"
        rules = [r for g in _api(port, "rules")["data"]["groups"] for r in g["rules"]]
        assert len(rules) == len(alert_exprs()) and all(r["health"] == "ok" for r in rules), rules
        for name, expr in dashboard_exprs().items():
            assert _api(port, "query", query=expr)["status"] == "success", name
        ttft = _query(port, 'sum(enclave_time_to_first_token_seconds_count{model="tiny-onnx"})')
        assert float(ttft[0]["value"][1]) == 2.0
    finally:
        proc.terminate()
        proc.wait(30)


def _query(port: int, expr: str) -> list:
    try:
        return _api(port, "query", query=expr)["data"]["result"]
    except OSError:
        return []
