"""The configs the stack renders from the topology, and the committed monitoring configs,
checked by the servers' own tools (promtool, amtool, statsd_exporter --check-config)."""

from __future__ import annotations

import json
import stat
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from retail.connections import (
    CASSANDRA_CONN_ID,
    KAFKA_CONN_ID,
    STATSD_CONN_ID,
    topology_from_extra,
)
from retail.credentials import CASSANDRA_OPS
from retail.settings import get_settings
from retail.topology import profile_topology
from stack import cassandra, kafka, secrets
from stack.errors import ComponentError
from stack.fetch import Artifacts
from stack.monitoring import MONITORING, scrape_targets


def test_cassandra_yaml_is_rendered_from_the_topology(tmp_path: Path) -> None:
    topo = profile_topology("demo")
    node = topo.node("us-east-2")
    home = cassandra.write_config(tmp_path, topo, node)
    conf = yaml.safe_load((home / "conf" / "cassandra.yaml").read_text())
    assert conf["listen_address"] == conf["rpc_address"] == "127.0.2.2"
    assert conf["initial_token"] == str(node.token)
    assert conf["endpoint_snitch"] == "GossipingPropertyFileSnitch"
    assert conf["materialized_views_enabled"] is True
    seeds = conf["seed_provider"][0]["parameters"][0]["seeds"].split(",")
    assert seeds == ["127.0.1.1:7000", "127.0.2.1:7000", "127.0.3.1:7000"]
    assert (home / "conf" / "cassandra-rackdc.properties").read_text() == "dc=us-east\nrack=rack2\n"


@pytest.mark.parametrize(
    "brokers, quorum",
    [
        (1, "controller.quorum.bootstrap.servers=127.0.10.1:9093"),
        (3, "controller.quorum.voters=1@127.0.10.1:9093,2@127.0.10.2:9093,3@127.0.10.3:9093"),
    ],
)
def test_kafka_properties_pick_the_quorum_mode(tmp_path: Path, brokers: int, quorum: str) -> None:
    topo = profile_topology("test", brokers=brokers)
    secrets.ensure(tmp_path, topo)
    home = kafka.write_config(tmp_path, topo, topo.brokers[0])
    props = (home / "server.properties").read_text()
    assert quorum in props.splitlines()
    assert f"offsets.topic.replication.factor={brokers}" in props


def test_kafka_is_secure_by_default_and_its_config_is_private(tmp_path: Path) -> None:
    topo = profile_topology("test", brokers=3)
    creds = secrets.ensure(tmp_path, topo)
    broker = topo.brokers[1]
    home = kafka.write_config(tmp_path, topo, broker)
    path = home / "server.properties"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds the admin's password
    props = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line[:80])
    assert props["listener.security.protocol.map"] == "CLIENT:SASL_SSL,CONTROLLER:SSL"
    assert props["listeners"] == "CLIENT://127.0.10.2:9092,CONTROLLER://127.0.10.2:9093"
    assert props["advertised.listeners"] == "CLIENT://127.0.10.2:9092"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["listener.name.controller.ssl.client.auth"] == "required"
    assert props["ssl.keystore.location"] == str(secrets.server_pem(tmp_path, broker.name))
    assert props["ssl.truststore.location"] == str(creds.ca_file)
    assert props["authorizer.class.name"].endswith("StandardAuthorizer")
    assert props["super.users"].split(";") == [
        "User:admin",
        *(f"User:CN=kafka-{i},O=retail-platform local stack" for i in (1, 2, 3)),
    ]
    assert "allow.everyone.if.no.acl.found" not in props
    jaas = props["listener.name.client.scram-sha-512.sasl.jaas.config"]
    assert 'username="admin"' in jaas
    assert creds.login("kafka", "admin").password.get_secret_value() in jaas


def test_the_format_step_adds_every_kafka_login_from_a_private_file_not_the_command_line(
    tmp_path: Path,
) -> None:
    topo = profile_topology("demo")
    creds = secrets.ensure(tmp_path, topo)
    lines = kafka.scram_arguments(tmp_path, topo).splitlines()
    users = secrets.wanted_logins(topo)["kafka"]
    assert lines[0::2] == ["--add-scram"] * len(users)
    assert lines[1::2] == [
        f"SCRAM-SHA-512=[name={u},password={creds.login('kafka', u).password.get_secret_value()}]"
        for u in users
    ]


def test_new_cluster_ids_never_start_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    # 0xf8 encodes to "-" in base64url: the first draw would read as an option on a command line.
    draws = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x04" + bytes(15))])
    monkeypatch.setattr(kafka.uuid, "uuid4", lambda: next(draws))
    assert kafka.new_cluster_id() == "BAAAAAAAAAAAAAAAAAAAAA"


def test_storage_formats_whatever_the_cluster_id_starts_with(
    artifacts: Artifacts, tmp_path: Path
) -> None:
    # A stack made before ids were drawn without a leading "-" keeps its id; CI once drew one.
    topo = profile_topology("test")
    broker = topo.brokers[0]
    (tmp_path / "kafka").mkdir()
    (tmp_path / "kafka" / "cluster-id").write_text("-46zcumXTZK8RBbW88U_PA")
    secrets.ensure(tmp_path, topo)
    home = kafka.write_config(tmp_path, topo, broker)
    kafka.format_storage(tmp_path, topo, broker, artifacts)
    meta = (home / "data" / "meta.properties").read_text().splitlines()
    assert "cluster.id=-46zcumXTZK8RBbW88U_PA" in meta
    assert not (home / ".format-scram-args").exists()  # the passwords' file is gone


def test_a_storage_formatted_before_kafkas_logins_is_refused_with_what_to_do(
    artifacts: Artifacts, tmp_path: Path
) -> None:
    topo = profile_topology("test")
    broker = topo.brokers[0]
    secrets.ensure(tmp_path, topo)
    home = kafka.write_config(tmp_path, topo, broker)
    kafka.format_storage(tmp_path, topo, broker, artifacts)
    kafka.format_storage(tmp_path, topo, broker, artifacts)  # formatted with the logins: kept
    # What a stack formatted by a version without logins has: the storage, no SCRAM marker.
    (home / kafka.SCRAM_FORMATTED).unlink()
    with pytest.raises(ComponentError, match=r"before Kafka had logins.*--fresh"):
        kafka.format_storage(tmp_path, topo, broker, artifacts)


def test_scrape_targets_label_every_node_with_its_dc() -> None:
    topo = profile_topology("demo")
    targets = scrape_targets(topo)
    labels = [g["labels"] for g in targets["cassandra"]]
    assert [(lab["dc"], lab["node"]) for lab in labels] == [(n.dc, n.name) for n in topo.nodes]
    assert targets["kafka"] == [
        {"targets": [f"127.0.10.{i}:9404"], "labels": {"broker": f"kafka-{i}"}} for i in (1, 2, 3)
    ]


@pytest.fixture(scope="module")
def artifacts() -> Artifacts:
    art = Artifacts(get_settings().cache_dir)
    assert not art.missing(), "run `make setup` (or `retail stack fetch`) first"
    return art


def _ok(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_prometheus_config_and_rules_pass_promtool(artifacts: Artifacts, tmp_path: Path) -> None:
    import shutil

    # promtool resolves rule files and file_sd paths next to the config, as Prometheus does.
    shutil.copytree(MONITORING / "prometheus", tmp_path / "prometheus")
    _ok([str(artifacts.promtool), "check", "config", str(tmp_path / "prometheus/prometheus.yml")])
    rules = sorted((MONITORING / "prometheus" / "rules").glob("*.yml"))
    _ok([str(artifacts.promtool), "check", "rules", *map(str, rules)])


def test_alertmanager_config_passes_amtool(artifacts: Artifacts) -> None:
    amtool = artifacts.debian_root / "usr/bin/amtool"
    _ok([str(amtool), "check-config", str(MONITORING / "alertmanager" / "alertmanager.yml")])


def test_statsd_mapping_passes_statsd_exporter(artifacts: Artifacts) -> None:
    _ok(
        [
            str(artifacts.statsd_exporter),
            "--check-config",
            f"--statsd.mapping-config={MONITORING / 'statsd' / 'mapping.yml'}",
        ]
    )


def test_compose_prometheus_targets_carry_the_local_stacks_labels() -> None:
    """docker/ mounts its own file_sd targets for the same prometheus.yml: same jobs, same
    labels and ports as the local demo stack, only the host names differ (and Compose runs one
    Kafka broker where the demo profile runs three)."""
    import json

    local = scrape_targets(profile_topology("demo", brokers=1))
    compose_dir = MONITORING.parent / "docker" / "prometheus-targets"
    assert sorted(p.stem for p in compose_dir.glob("*.json")) == sorted(local)
    for job, groups in local.items():
        compose = json.loads((compose_dir / f"{job}.json").read_text())
        assert [g["labels"] for g in compose] == [g["labels"] for g in groups], job
        ports = [[t.rsplit(":", 1)[1] for t in g["targets"]] for g in compose]
        assert ports == [[t.rsplit(":", 1)[1] for t in g["targets"]] for g in groups], job


def test_compose_airflow_connections_name_a_mounted_topology_of_the_compose_services() -> None:
    docker = MONITORING.parent / "docker"
    airflow = yaml.safe_load((docker / "compose.yaml").read_text())["services"]["airflow"]
    env = airflow["environment"]
    assert {k for k in env if k.startswith("AIRFLOW_CONN_")} == {
        f"AIRFLOW_CONN_{c.upper()}" for c in (CASSANDRA_CONN_ID, KAFKA_CONN_ID, STATSD_CONN_ID)
    }
    conn = json.loads(env["AIRFLOW_CONN_RETAIL_CASSANDRA"])
    assert conn["login"] == CASSANDRA_OPS
    assert conn["password"].startswith("${CASSANDRA_OPS_PASSWORD:?")
    extra = conn["extra"]
    mounts = dict(reversed(v.split(":")[:2]) for v in airflow["volumes"] if ":" in v)
    local_file = docker / mounts[extra["topology_file"]]
    assert extra["ssl_options"]["ca_certs"] in mounts, "the CA the connection names is mounted"
    topology = topology_from_extra({"topology_file": str(local_file)})
    assert extra["local_dc"] in {dc.name for dc in topology.datacenters}
    services = set(yaml.safe_load((docker / "compose.yaml").read_text())["services"])
    assert {n.address for n in topology.nodes} <= services
