"""The monitoring servers and Jolokia as configured: loopback and no lifecycle API on the local
stack; in Compose, no published Jolokia, basic auth on Prometheus, Alertmanager and
statsd_exporter, and no secret with a default value."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from retail.topology import Endpoint, profile_topology
from stack import monitoring
from stack.errors import StackError
from stack.fetch import Artifacts

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE_TEXT = (DOCKER / "compose.yaml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES: dict[str, Any] = COMPOSE["services"]
WEB_CONFIG = "--web.config.file=/etc/monitoring-auth/web-config.yml"


def _monitoring_argvs(tmp_path: Path, topology: Any) -> dict[str, list[str]]:
    artifacts = Artifacts(tmp_path / "cache")
    return {
        "prometheus": monitoring.prometheus_process(tmp_path, topology, artifacts).argv,
        "alertmanager": monitoring.alertmanager_process(tmp_path, topology, artifacts).argv,
        "statsd_exporter": monitoring.statsd_exporter_process(tmp_path, topology, artifacts).argv,
    }


def test_the_local_monitoring_listens_on_loopback_without_a_lifecycle_api(tmp_path: Path) -> None:
    argvs = _monitoring_argvs(tmp_path, profile_topology("test"))
    for name, argv in argvs.items():
        listens = [a.split("=", 1)[1] for a in argv if "listen" in a and "=" in a and a[-1] != "="]
        assert listens, name
        assert all(a.startswith("127.") for a in listens), (name, listens)
        assert not any("lifecycle" in a for a in argv), name
    assert "--cluster.listen-address=" in argvs["alertmanager"]


def test_the_local_monitoring_refuses_a_non_loopback_address(tmp_path: Path) -> None:
    topology = replace(profile_topology("test"), prometheus=Endpoint("0.0.0.0", 9090))
    with pytest.raises(StackError, match="not a loopback address"):
        _monitoring_argvs(tmp_path, topology)


def test_compose_publishes_no_jolokia_and_binds_it_to_no_wildcard() -> None:
    opts = SERVICES["cassandra-eu-west-1"]["environment"]["JVM_EXTRA_OPTS"]
    jolokia = [o for o in opts.split() if "jolokia" in o]
    assert jolokia == [
        "-javaagent:/opt/jolokia/jolokia-agent.jar=config=/etc/jolokia/run/agent.properties"
    ]
    assert "0.0.0.0" not in COMPOSE_TEXT
    entrypoint = (DOCKER / "jvm" / "cassandra-entrypoint.sh").read_text()
    assert "host=${address}" in entrypoint and "umask 077" in entrypoint
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
            assert not str(port).endswith(":8778"), name


def test_compose_monitoring_servers_ask_for_a_login_and_have_no_lifecycle_api() -> None:
    for name in ("prometheus", "alertmanager", "statsd-exporter"):
        command = SERVICES[name]["command"]
        assert WEB_CONFIG in command, name
        assert not any("lifecycle" in c for c in command), name
        assert SERVICES[name]["depends_on"]["monitoring-auth"] == {
            "condition": "service_completed_successfully"
        }
    assert "ports" not in SERVICES["statsd-exporter"]
    datasource = yaml.safe_load(
        (ROOT / "monitoring/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    assert datasource["basicAuth"] is True
    assert datasource["secureJsonData"]["basicAuthPassword"] == "$MONITORING_PASSWORD"


def _without_auth(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_auth(v) for k, v in value.items() if k != "basic_auth"}
    if isinstance(value, list):
        return [_without_auth(v) for v in value]
    return value


def test_compose_prometheus_config_is_the_local_one_plus_basic_auth() -> None:
    local = yaml.safe_load((ROOT / "monitoring/prometheus/prometheus.yml").read_text())
    compose = yaml.safe_load((DOCKER / "prometheus/prometheus.yml").read_text())
    assert _without_auth(compose) == local
    authed = {j["job_name"] for j in compose["scrape_configs"] if "basic_auth" in j}
    assert authed == {"prometheus", "alertmanager", "statsd_exporter"}
    assert "basic_auth" in compose["alerting"]["alertmanagers"][0]
    mounts = SERVICES["prometheus"]["volumes"]
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts


def test_compose_has_no_default_secret_and_the_example_names_every_one() -> None:
    example = (DOCKER / "secrets.example.env").read_text()
    names = dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", example, re.MULTILINE))
    assert names and all(v == "" for v in names.values()), "the example holds no value"
    used = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", COMPOSE_TEXT))
    secret = {v for v in used if re.search("PASSWORD|SECRET|TOKEN", v)}
    assert secret == set(names)
    for var in secret:
        for use in re.findall(r"\$\{" + var + r"([^}]*)\}", COMPOSE_TEXT):
            assert use.startswith(":?"), f"${{{var}{use}}} must be required, with no default"
    env_file = (DOCKER / ".env").read_text()
    assert not re.search("PASSWORD|SECRET|TOKEN", env_file)
