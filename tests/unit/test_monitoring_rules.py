"""Alert rules and Alertmanager, checked by the servers' own tools: `promtool test rules` runs the
rule tests in monitoring/prometheus/tests/, `amtool` checks the configs and the routing, and a
real Alertmanager of the test's own (free loopback ports, its webhooks pointed at a closed port)
shows which alerts the inhibit rules silence."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import yaml

from retail.settings import get_settings
from stack.fetch import Artifacts

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
RULES = MONITORING / "prometheus" / "rules"
RULE_TESTS = MONITORING / "prometheus" / "tests"
ALERTMANAGER_YML = MONITORING / "alertmanager" / "alertmanager.yml"
EXAMPLE_RECEIVERS = MONITORING.parent / "docker" / "alertmanager-receivers.example.yml"


@pytest.fixture(scope="module")
def artifacts() -> Artifacts:
    art = Artifacts(get_settings().cache_dir)
    if not art.promtool.exists() or not art.alertmanager.exists():
        pytest.fail("promtool/alertmanager are not in the cache: run `make setup`")
    return art


def _ok(argv: list[str], cwd: Path | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def _alert_rules() -> list[dict]:
    return [
        rule
        for path in sorted(RULES.glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def test_every_alert_has_a_severity_a_summary_and_a_runbook() -> None:
    rules = _alert_rules()
    assert rules
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert rule["annotations"]["runbook"].strip(), rule["alert"]


def test_the_issues_alerts_all_exist() -> None:
    names = {rule["alert"] for rule in _alert_rules()}
    assert names >= {
        "ScrapeTargetDown",
        "CassandraNodeDown",
        "CassandraDatacenterDown",
        "CassandraWriteLatencyHigh",
        "ConsumerLagGrowing",
        "DeadLetterRateHigh",
        "PipelineStalled",
        "KafkaPartitionSkew",
        "CassandraOwnershipImbalance",
        "CassandraLoadImbalance",
        "TableRepairOverdue",
        "MaterializedViewInconsistent",
        "DagRunFailed",
        "DiskNearlyFull",
    }


def test_every_alert_has_a_firing_and_a_quiet_rule_test() -> None:
    """Each alert name is evaluated in the rule tests at least once where it must fire and once
    where it must not (before its `for` has passed, or with only healthy series)."""
    fired: set[str] = set()
    quiet: set[str] = set()
    for path in sorted(RULE_TESTS.glob("*.yml")):
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {rule["alert"] for rule in _alert_rules()}
    assert names - fired == set(), "alerts never shown firing"
    assert names - quiet == set(), "alerts never shown quiet"


def test_rule_tests_pass_promtool(artifacts: Artifacts) -> None:
    tests = sorted(p.name for p in RULE_TESTS.glob("*.yml"))
    out = _ok([str(artifacts.promtool), "test", "rules", *tests], cwd=RULE_TESTS)
    assert out.count("SUCCESS") == len(tests), out


def test_rules_pass_promtool_check(artifacts: Artifacts) -> None:
    _ok([str(artifacts.promtool), "check", "rules", *map(str, sorted(RULES.glob("*.yml")))])


@pytest.mark.parametrize("config", [ALERTMANAGER_YML, EXAMPLE_RECEIVERS], ids=lambda p: p.name)
def test_alertmanager_configs_pass_amtool(artifacts: Artifacts, config: Path) -> None:
    _ok([str(artifacts.debian_root / "usr/bin/amtool"), "check-config", str(config)])


@pytest.mark.parametrize(
    "labels, receiver",
    [
        (["alertname=CassandraDatacenterDown", "dc=us-east", "severity=critical"], "critical"),
        (["alertname=CassandraNodeDown", "dc=us-east", "severity=warning"], "warning"),
        (["alertname=SomethingNew"], "default"),
    ],
)
def test_alerts_route_by_severity(artifacts: Artifacts, labels: list[str], receiver: str) -> None:
    amtool = str(artifacts.debian_root / "usr/bin/amtool")
    out = _ok([amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER_YML}", *labels])
    assert out.splitlines()[0].strip() == receiver


def test_every_route_delivers_to_the_platform_webhook() -> None:
    config = yaml.safe_load(ALERTMANAGER_YML.read_text())
    urls = {hook["url"] for receiver in config["receivers"] for hook in receiver["webhook_configs"]}
    assert urls == {"http://127.0.0.1:9096/alerts"}


# --- inhibition, on a real Alertmanager ----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def alertmanager(artifacts: Artifacts, tmp_path: Path) -> Iterator[str]:
    """The committed config, except that its webhooks point at a port bound but not listening:
    notifications fail fast and never reach a receiver someone runs on 9096."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    config = yaml.safe_load(ALERTMANAGER_YML.read_text())
    for receiver in config["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook["url"] = f"http://127.0.0.1:{closed.getsockname()[1]}/alerts"
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{_free_port()}"
    log = (tmp_path / "alertmanager.log").open("w")
    proc = subprocess.Popen(
        [
            str(artifacts.alertmanager),
            f"--config.file={tmp_path / 'alertmanager.yml'}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address={url.removeprefix('http://')}",
            "--cluster.listen-address=",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (tmp_path / "alertmanager.log").read_text()
            assert time.monotonic() < deadline, "Alertmanager did not become ready"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
        closed.close()


def _suppressed(url: str, alerts: list[dict[str, str]]) -> set[tuple[str, ...]]:
    """Post the alerts (labels only) and return those Alertmanager reports as inhibited."""
    now = datetime.now(UTC).isoformat()
    httpx.post(
        f"{url}/api/v2/alerts", json=[{"labels": a, "startsAt": now} for a in alerts], timeout=5
    ).raise_for_status()
    deadline = time.monotonic() + 10
    while True:
        got = httpx.get(f"{url}/api/v2/alerts", timeout=5).json()
        if len(got) == len(alerts):
            break
        assert time.monotonic() < deadline, f"Alertmanager holds {len(got)} of {len(alerts)} alerts"
        time.sleep(0.05)
    return {
        tuple(sorted(a["labels"].items()))
        for a in got
        if a["status"]["state"] == "suppressed" and a["status"]["inhibitedBy"]
    }


def _key(alert: dict[str, str]) -> tuple[str, ...]:
    return tuple(sorted(alert.items()))


def test_a_dc_down_silences_its_nodes_and_their_scrapes_only(alertmanager: str) -> None:
    def node(alertname: str, dc: str, n: int, severity: str = "warning") -> dict[str, str]:
        return {
            "alertname": alertname,
            "severity": severity,
            "job": "cassandra",
            "instance": f"127.0.{ {'eu-west': 1, 'us-east': 2}[dc] }.{n}:9500",
            "dc": dc,
            "node": f"{dc}-{n}",
        }

    dc_down = {"alertname": "CassandraDatacenterDown", "severity": "critical", "dc": "eu-west"}
    eu_node = node("CassandraNodeDown", "eu-west", 1)
    eu_scrape = node("ScrapeTargetDown", "eu-west", 1)
    us_node = node("CassandraNodeDown", "us-east", 1)
    us_scrape = node("ScrapeTargetDown", "us-east", 1)
    kafka_scrape = {
        "alertname": "ScrapeTargetDown",
        "severity": "warning",
        "job": "kafka",
        "instance": "127.0.10.1:9404",
    }
    suppressed = _suppressed(
        alertmanager, [dc_down, eu_node, eu_scrape, us_node, us_scrape, kafka_scrape]
    )
    # eu-west: the DC alert only. us-east: the node alert, not its scrape. Kafka: untouched.
    assert suppressed == {_key(eu_node), _key(eu_scrape), _key(us_scrape)}


def test_a_critical_silences_the_warning_of_the_same_name_about_the_same_thing(
    alertmanager: str,
) -> None:
    def disk(node: str, severity: str) -> dict[str, str]:
        return {"alertname": "DiskNearlyFull", "severity": severity, "dc": "eu-west", "node": node}

    def table(name: str, severity: str) -> dict[str, str]:
        return {
            "alertname": "TableRepairOverdue",
            "severity": severity,
            "keyspace": "retail",
            "table": name,
        }

    alerts = [
        disk("eu-west-1", "critical"),
        disk("eu-west-1", "warning"),
        disk("eu-west-2", "warning"),
        table("orders", "critical"),
        table("orders", "warning"),
        table("inventory", "warning"),
    ]
    assert _suppressed(alertmanager, alerts) == {
        _key(disk("eu-west-1", "warning")),
        _key(table("orders", "warning")),
    }


def test_the_compose_example_inhibits_like_the_committed_config() -> None:
    example = yaml.safe_load(EXAMPLE_RECEIVERS.read_text())
    committed = yaml.safe_load(ALERTMANAGER_YML.read_text())
    assert example["inhibit_rules"] == committed["inhibit_rules"]
    assert example["route"]["group_by"] == committed["route"]["group_by"]
