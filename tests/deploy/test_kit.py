"""The operations kit without a Docker engine or a cluster: every command the images, the compose
file, the Kubernetes manifests and the systemd unit run must parse with the real CLI; the
manifests validate against the Kubernetes API schemas; the unit passes systemd-analyze."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from enclave.cli import build_parser, default_action
from tests.deploy.conftest import DEPLOY, ROOT

K8S = DEPLOY / "kubernetes"
K8S_VERSION = "1.33.0"


def assert_cli(argv: list[str]) -> None:
    """``argv`` (without the leading `enclave`) parses with the real parser: every subcommand and flag exists."""
    try:
        build_parser().parse_args(default_action(list(argv)))
    except SystemExit as exc:
        pytest.fail(f"`enclave {' '.join(argv)}` does not parse (exit {exc.code})")


def serve_config(text: str):
    from serve.config import ServeConfig

    return ServeConfig.model_validate(yaml.safe_load(text))


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        if raw.lstrip().startswith("#") and not current:
            continue
        current += raw.rstrip()[:-1] + " " if raw.rstrip().endswith("\\") else raw
        if not raw.rstrip().endswith("\\"):
            if current.strip():
                word, _, rest = current.strip().partition(" ")
                lines.append((word.upper(), rest.strip()))
            current = ""
    return lines


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"use the exec form (a JSON array), not a shell string: {args}"
    return value


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfile_commands_exist_in_the_cli(name):
    steps = dockerfile(DEPLOY / name)
    get = lambda word: [rest for w, rest in steps if w == word]  # noqa: E731
    entrypoint, cmd = exec_form(get("ENTRYPOINT")[-1]), exec_form(get("CMD")[-1])
    assert entrypoint == ["enclave"]
    assert_cli(cmd)
    health = get("HEALTHCHECK")[-1]
    check = exec_form(health.split(" CMD ", 1)[1])
    assert check[0] == "enclave" and check[1:3] == ["client", "health"]
    assert_cli(check[1:])
    users = get("USER")
    assert users and users[-1].split(":")[0] not in ("0", "root"), "the image runs as a non-root user"
    assert get("STOPSIGNAL") == ["SIGTERM"]
    copies = [c.split() for c in get("COPY") if "--from" not in c]
    for *sources, _dest in copies:
        for src in sources:
            assert (ROOT / src).exists(), f"{name}: COPY {src}: no such path in the repository"
    config_path = cmd[cmd.index("--config") + 1]
    copied = {dest: src for *srcs, dest in copies for src in srcs}
    cfg = serve_config((ROOT / copied[config_path]).read_text())
    exposed = {int(p) for e in get("EXPOSE") for p in e.split()}
    assert {cfg.port, cfg.http_port, cfg.metrics_port} <= exposed
    assert check[check.index("--target") + 1] == f"127.0.0.1:{cfg.health_port}", "the health check asks the probe port"


def test_dockerignore_keeps_environments_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".venv-vllm", ".git"} <= set(ignored)


def test_compose_wires_enclave_prometheus_and_grafana():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"enclave", "prometheus", "grafana"}
    enclave = services["enclave"]
    assert (DEPLOY / enclave["build"]["context"] / enclave["build"]["dockerfile"]).is_file()
    assert_cli(enclave["command"])
    cfg = serve_config((DEPLOY / "config/serve.yaml").read_text())
    assert any(p.endswith(f":{cfg.port}") for p in enclave["ports"])
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), f"compose mounts {source}, which is not in deploy/"
    scrape = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == [f"enclave:{cfg.metrics_port}"]
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())[
        "datasources"
    ][0]
    assert datasource["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/enclave.yml").read_text())["providers"][0]
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    env = services["grafana"]["environment"]
    assert env["GF_ANALYTICS_REPORTING_ENABLED"] == "false", "no telemetry"


def k8s_documents() -> list[tuple[str, dict]]:
    return [
        (p.name, doc)
        for p in sorted(K8S.glob("*.yaml"))
        if p.name != "kustomization.yaml"
        for doc in yaml.safe_load_all(p.read_text())
    ]


@pytest.mark.parametrize("name, doc", k8s_documents(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_kubernetes_manifests_validate_strictly(name, doc):
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{name}: {exc.message} at {'.'.join(map(str, exc.path))}")


def test_the_validator_rejects_a_wrong_field():
    import kubernetes_validate

    doc = yaml.safe_load((K8S / "deployment.yaml").read_text())
    doc["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpcc"] = {"port": 1}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kustomization_and_deployment_agree_with_the_server(exported):
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    examples = {p.name for p in K8S.glob("*.example.yaml")} | {
        "prometheus-adapter.yaml",
        "job-install-bundle.yaml",
        "kustomization.yaml",
    }
    assert set(kust["resources"]) == {p.name for p in K8S.glob("*.yaml")} - examples
    docs = {(d["kind"], d["metadata"]["name"]): d for _, d in k8s_documents()}
    cfg = serve_config(docs[("ConfigMap", "enclave-config")]["data"]["serve.yaml"])
    pod = docs[("Deployment", "enclave")]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert_cli(container["args"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": cfg.port, "http": cfg.http_port, "metrics": cfg.metrics_port, "health": cfg.health_port}
    assert container["readinessProbe"]["grpc"] == {"port": cfg.health_port}
    assert container["livenessProbe"]["grpc"] == {"port": cfg.health_port, "service": "liveness"}
    assert pod["terminationGracePeriodSeconds"] > cfg.grace_seconds
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for path in (cfg.tls.cert, cfg.tls.key, cfg.tls.client_ca, cfg.auth.tokens_file):
        assert any(path.startswith(m + "/") for m in mounts), f"{path} is not on a mounted volume"
    assert mounts[cfg.repo]["readOnly"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] and pod["securityContext"]["runAsNonRoot"]
    hpa = docs[("HorizontalPodAutoscaler", "enclave")]["spec"]
    pods_metric = next(m for m in hpa["metrics"] if m["type"] == "Pods")["pods"]["metric"]["name"]
    assert pods_metric in exported, "the autoscaler scales on a metric the server exports"
    job = docs[("Job", "enclave-install-bundle")]["spec"]["template"]["spec"]["containers"][0]
    assert_cli(job["args"])


def test_the_audit_log_is_on_a_persistent_volume_one_directory_per_pod():
    docs = {(d["kind"], d["metadata"]["name"]): d for _, d in k8s_documents()}
    cfg = serve_config(docs[("ConfigMap", "enclave-config")]["data"]["serve.yaml"])
    pod = docs[("Deployment", "enclave")]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert cfg.audit_log, "the server in Kubernetes writes an audit file"
    (mount,) = [m for m in container["volumeMounts"] if cfg.audit_log.startswith(m["mountPath"].rstrip("/") + "/")]
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert "persistentVolumeClaim" in volume, (
        f"the audit volume is {sorted(set(volume) - {'name'})}, not a PersistentVolumeClaim"
    )
    assert not mount.get("readOnly") and not volume["persistentVolumeClaim"].get("readOnly")
    claim = docs[("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])]["spec"]
    # Replicas on several nodes mount the claim, each in its own directory: one writer per chain.
    assert claim["accessModes"] == ["ReadWriteMany"]
    assert mount["subPathExpr"] == "$(POD_NAME)"
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_systemd_unit_verifies_and_is_hardened(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed on this machine (Debian package systemd)")
    text = (DEPLOY / "systemd/enclave.service").read_text()
    exec_start = next(line.split("=", 1)[1] for line in text.splitlines() if line.startswith("ExecStart="))
    argv = shlex.split(exec_start)
    assert argv[0] == "/opt/enclave/bin/enclave"
    assert_cli(argv[1:])
    for setting in (
        "User=enclave",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=\n",
    ):
        assert setting in text, setting
    # Verify the unit as installed, with ExecStart pointing at this environment's real `enclave`.
    unit = tmp_path / "enclave.service"
    unit.write_text(text.replace(argv[0], str(Path(sys.executable).parent / "enclave")))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit)], capture_output=True, text=True, timeout=60
    )
    level = float(done.stdout.split("Overall exposure level for enclave.service:")[1].split()[0])
    assert level <= 2.0, done.stdout[-2000:]


def test_feedback_purge_timer_verifies_and_is_hardened(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed on this machine (Debian package systemd)")
    name = "enclave-feedback-purge"
    text = (DEPLOY / f"systemd/{name}.service").read_text()
    argv = shlex.split(next(line.split("=", 1)[1] for line in text.splitlines() if line.startswith("ExecStart=")))
    assert argv[:3] == ["/opt/enclave/bin/enclave", "feedback", "purge"]
    assert_cli(argv[1:])
    (tmp_path / f"{name}.service").write_text(text.replace(argv[0], str(Path(sys.executable).parent / "enclave")))
    (tmp_path / f"{name}.timer").write_text((DEPLOY / f"systemd/{name}.timer").read_text())
    units = [str(tmp_path / f"{name}.service"), str(tmp_path / f"{name}.timer")]
    done = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", units[0]], capture_output=True, text=True, timeout=60
    )
    level = float(done.stdout.split(f"Overall exposure level for {name}.service:")[1].split()[0])
    assert level <= 2.0, done.stdout[-2000:]
