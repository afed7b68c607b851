"""The Helm chart (deploy/helm/retail-platform): bad values are refused with a message, and the
rendered chart agrees with the local stack's sources (retail/topology.py, retail/kafka.py,
retail/kafka_acls.py, monitoring/).

These tests run the helm and kubeconform binaries that ``make k8s-check`` installs; without them
they fail (never skip) saying to run it.
"""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from retail.helm import CHART_DIR, k8s_topology, profile_values, render, topology_path
from retail.kafka import Topics
from retail.kafka_acls import grants
from retail.settings import PROJECT_ROOT
from retail.topology import PROFILES, Topology, profile_topology

_spec = importlib.util.spec_from_file_location("k8s_check", CHART_DIR.parent / "check.py")
assert _spec and _spec.loader
check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check)


KUBE = ("--kube-version", "1.37.0")


def _tool(name: str) -> Path:
    path = check.tool(name)
    if not path.exists():
        pytest.fail(f"{name} is not installed at {path}: run make k8s-check")
    return path


def _helm(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(_tool("helm")), *map(str, args)], capture_output=True, text=True, check=False
    )


def _values(profile: str) -> Path:
    return CHART_DIR / f"values-{profile}.yaml"


def _override(tmp_path: Path, values: dict[str, Any]) -> Path:
    path = tmp_path / "override.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _rendered(profile: str) -> list[dict[str, Any]]:
    proc = _helm("template", "retail", CHART_DIR, "-f", _values(profile), *KUBE)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def _of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_values_files_are_generated_from_the_topology(profile: str) -> None:
    assert _values(profile).read_text() == render(profile), (
        f"values-{profile}.yaml is stale: run `python -m retail.helm`"
    )


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_the_charts_topology_is_the_profiles_with_the_operators_addresses(profile: str) -> None:
    assert topology_path(profile).read_text() == k8s_topology(profile).to_json() + "\n", (
        f"files/topology-{profile}.json is stale: run `python -m retail.helm`"
    )
    (config,) = [
        d
        for d in _of_kind(_rendered(profile), "ConfigMap")
        if d["metadata"]["name"] == "retail-topology"
    ]
    mounted = Topology.from_json(config["data"]["topology.json"])
    local = profile_topology(profile)
    assert mounted.replication() == local.replication()
    assert [len(dc.nodes) for dc in mounted.datacenters] == [
        len(dc.nodes) for dc in local.datacenters
    ]
    assert len(mounted.brokers) == max(3, len(local.brokers))
    assert mounted.nodes[0].address.startswith("retail-eu-west-rack1-sts-0.")


def test_a_value_of_the_wrong_type_fails_lint_with_its_path(tmp_path: Path) -> None:
    bad = _override(tmp_path, {"consumer": {"replicas": "two"}})
    proc = _helm("lint", "--strict", CHART_DIR, "-f", _values("demo"), "-f", bad)
    assert proc.returncode != 0
    assert "/consumer/replicas" in proc.stdout
    assert "got string, want integer" in proc.stdout


def test_a_node_pool_of_fewer_than_three_brokers_fails_lint(tmp_path: Path) -> None:
    bad = _override(tmp_path, {"kafka": {"brokers": 1}})
    proc = _helm("lint", "--strict", CHART_DIR, "-f", _values("demo"), "-f", bad)
    assert proc.returncode != 0
    assert "/kafka/brokers" in proc.stdout and "minimum" in proc.stdout


def test_an_unknown_value_fails_lint(tmp_path: Path) -> None:
    bad = _override(tmp_path, {"kafka": {"partitons": 12}})
    proc = _helm("lint", "--strict", CHART_DIR, "-f", _values("demo"), "-f", bad)
    assert proc.returncode != 0
    assert "partitons" in proc.stdout


def test_the_chart_without_a_profile_says_which_values_are_missing() -> None:
    proc = _helm("lint", "--strict", CHART_DIR)
    assert proc.returncode != 0
    assert "/profile" in proc.stdout


def test_a_replication_factor_above_a_dcs_nodes_is_refused(tmp_path: Path) -> None:
    dcs = profile_values("demo")["cassandra"]["datacenters"]
    dcs[1] = {**dcs[1], "replicationFactor": 3}  # us-east has 2 nodes
    bad = _override(tmp_path, {"cassandra": {"datacenters": dcs}})
    # helm lint reports a template's fail() as INFO only: `helm template` (run by make
    # k8s-check too) is what refuses it.
    proc = _helm("template", "retail", CHART_DIR, "-f", _values("demo"), "-f", bad, *KUBE)
    assert proc.returncode != 0
    assert "us-east: replicationFactor 3 exceeds its 2 nodes" in proc.stderr


def test_more_consumers_than_partitions_are_refused(tmp_path: Path) -> None:
    bad = _override(tmp_path, {"consumer": {"replicas": 13}})
    proc = _helm("template", "retail", CHART_DIR, "-f", _values("demo"), "-f", bad, *KUBE)
    assert proc.returncode != 0
    assert "consumer.replicas 13 exceeds kafka.topics.partitions 12" in proc.stderr


def test_an_unknown_field_in_a_custom_resources_metadata_is_refused() -> None:
    docs = _rendered("demo")
    topic = _of_kind(docs, "KafkaTopic")[0]
    topic["metadata"]["lables"] = {"typo": "yes"}
    schemas = check.schemas_dir()
    with pytest.raises(check.CheckError, match="lables"):
        check.check_custom_metadata(yaml.safe_dump(topic), schemas, "1.37.0")
    del topic["metadata"]["lables"]
    check.check_custom_metadata(yaml.safe_dump(topic), schemas, "1.37.0")


def _kubeconform(doc: dict[str, Any], strimzi: Path | None = None) -> subprocess.CompletedProcess:
    cmd = check.kubeconform_cmd(_tool("kubeconform"), check.schemas_dir(), "1.37.0", strimzi)
    return subprocess.run(cmd, input=yaml.safe_dump(doc), capture_output=True, text=True)


def test_kubeconform_strict_refuses_an_unknown_field_in_a_deployment() -> None:
    deployment = _of_kind(_rendered("demo"), "Deployment")[0]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["livenessProbes"] = {}
    bad = _kubeconform(deployment)
    assert bad.returncode != 0
    assert "livenessProbes" in bad.stdout
    del container["livenessProbes"]
    good = _kubeconform(deployment)
    assert good.returncode == 0, good.stdout


@pytest.mark.parametrize("kind", sorted(check.STRIMZI_CLASSES))
def test_strimzi_resources_are_checked_against_the_generated_crds(kind: str) -> None:
    strimzi = check.strimzi_schemas()
    if strimzi is None:
        pytest.fail("no Java 21+ to generate Strimzi's CRDs: install a JDK 21, run make k8s-check")
    resource = _of_kind(_rendered("demo"), kind)[0]
    good = _kubeconform(resource, strimzi)
    assert good.returncode == 0, good.stdout
    assert "Valid: 1," in good.stdout  # validated, not skipped
    resource["spec"]["partitionz"] = 12
    bad = _kubeconform(resource, strimzi)
    assert bad.returncode != 0
    assert "partitionz" in bad.stdout


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_the_chart_and_the_local_stack_agree(profile: str) -> None:
    docs = _rendered(profile)
    topology = profile_topology(profile)
    topics = Topics()

    (cluster,) = _of_kind(docs, "K8ssandraCluster")
    assert cluster["spec"]["auth"] is True
    assert "reaper" in cluster["spec"]
    dcs = cluster["spec"]["cassandra"]["datacenters"]
    assert [(d["metadata"]["name"], d["size"]) for d in dcs] == [
        (dc.name, len(dc.nodes)) for dc in topology.datacenters
    ]
    assert [sorted(r["name"] for r in d["racks"]) for d in dcs] == [
        sorted({n.rack for n in dc.nodes}) for dc in topology.datacenters
    ]
    assert cluster["metadata"]["annotations"]["retail.io/replication"] == (
        topology.replication_cql()
    )

    (pool,) = _of_kind(docs, "KafkaNodePool")
    # Three at least on a cluster (retail.helm.MIN_BROKERS), more if the profile has more.
    assert pool["spec"]["replicas"] == max(3, len(topology.brokers))
    kafka_topics = _of_kind(docs, "KafkaTopic")
    assert sorted(t["spec"]["topicName"] for t in kafka_topics) == sorted(topics.all)
    assert {t["spec"]["partitions"] for t in kafka_topics} == {topics.partitions}
    assert {t["spec"]["replicas"] for t in kafka_topics} == {min(3, pool["spec"]["replicas"])}

    acls = {
        (u["metadata"]["name"], a["resource"]["type"], a["resource"]["name"], op.upper())
        for u in _of_kind(docs, "KafkaUser")
        for a in u["spec"].get("authorization", {}).get("acls", [])
        for op in a["operations"]
    }
    assert acls == {(g.user, g.kind, g.name, g.operation) for g in grants(topics)}

    consumers = {
        d["metadata"]["labels"]["retail.io/region"]: d
        for d in _of_kind(docs, "Deployment")
        if d["metadata"]["labels"].get("app.kubernetes.io/name") == "consumer"
    }
    assert sorted(consumers) == sorted(dc.name for dc in topology.datacenters)


def test_the_chart_runs_the_repositorys_alert_rules_and_monitoring_files() -> None:
    docs = _rendered("demo")
    monitoring = PROJECT_ROOT / "monitoring"
    rules = {
        p.stem: yaml.safe_load(p.read_text())
        for p in sorted((monitoring / "prometheus" / "rules").glob("*.yml"))
    }
    rendered = {d["metadata"]["name"]: d["spec"] for d in _of_kind(docs, "PrometheusRule")}
    assert rendered == {f"retail-{name}": spec for name, spec in rules.items()}

    maps = {d["metadata"]["name"]: d["data"] for d in _of_kind(docs, "ConfigMap")}
    assert maps["retail-statsd-mapping"]["mapping.yml"] == (
        (monitoring / "statsd" / "mapping.yml").read_text().rstrip("\n")
    )
    for p in (monitoring / "jmx").glob("*.yml"):
        assert maps["retail-jmx-exporter"][p.name] == p.read_text().rstrip("\n")
    dashboards = sorted((monitoring / "grafana" / "dashboards").glob("*.json"))
    assert sorted(maps["retail-dashboards"]) == [p.name for p in dashboards]
    for p in dashboards:
        assert maps["retail-dashboards"][p.name] == p.read_text().rstrip("\n")


def test_strimzi_cel_rules_are_evaluated() -> None:
    strimzi = check.strimzi_schemas()
    if strimzi is None:
        pytest.fail("no Java 21+ to generate Strimzi's CRDs: install a JDK 21, run make k8s-check")
    (kafka,) = _of_kind(_rendered("demo"), "Kafka")
    check.check_strimzi_cel(yaml.safe_dump(kafka), strimzi)
    del kafka["spec"]["kafka"]["metricsConfig"]["valueFrom"]
    with pytest.raises(check.CheckError, match="metricsConfig: valueFrom property is required"):
        check.check_strimzi_cel(yaml.safe_dump(kafka), strimzi)
