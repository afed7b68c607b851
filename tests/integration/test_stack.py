"""The local stack as a user sees it through `retail stack`."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from retail.cassandra import connect
from retail.credentials import CASSANDRA_CONSUMER
from retail.topology import REGIONS, Topology
from stack.local import LocalStack
from tests.integration.conftest import retail, status_json


def test_three_dcs_with_every_node_up_normal(healthy: LocalStack, topology: Topology) -> None:
    code, st = status_json()
    assert code == 0
    assert st["ok"] is True
    by_dc: dict[str, list[dict]] = {}
    for node in st["nodes"]:
        by_dc.setdefault(node["dc"], []).append(node)
    assert sorted(by_dc) == sorted(r.dc for r in REGIONS)
    for dc in topology.datacenters:
        nodes = by_dc[dc.name]
        assert [n["name"] for n in nodes] == [n.name for n in dc.nodes]
        assert all(n["state"] == "UN" for n in nodes), nodes
        assert sum(n["owns"] for n in nodes) == pytest.approx(1.0)
    services = {s["name"]: s["state"] for s in st["services"]}
    assert services == {
        "statsd_exporter": "up",
        "alertmanager": "up",
        "prometheus": "up",
        "kafka-1": "up",
    }


def test_status_json_gives_every_endpoint(healthy: LocalStack, topology: Topology) -> None:
    _, st = status_json()
    ep = st["endpoints"]
    assert ep["cassandra"]["contact_points"] == {
        dc.name: [n.address for n in dc.nodes] for dc in topology.datacenters
    }
    assert ep["kafka"]["bootstrap_servers"] == topology.bootstrap_servers
    assert ep["prometheus"].startswith("http://127.0.0.1:")
    assert ep["alertmanager"].startswith("http://127.0.0.1:")
    assert ep["statsd"] == {"host": topology.statsd.host, "port": topology.statsd.port}


def test_human_status_shows_a_table_per_dc(healthy: LocalStack) -> None:
    out = retail("stack", "status").stdout
    for region in REGIONS:
        assert f"Datacenter: {region.dc}" in out
    assert "UN" in out and "prometheus" in out


def test_up_on_a_running_stack_changes_nothing(healthy: LocalStack, topology: Topology) -> None:
    before = {c.name: c.process.pid() for c in healthy.components(topology)}
    retail("stack", "up", "--profile", "test", "--consumers", "0")
    after = {c.name: c.process.pid() for c in healthy.components(topology)}
    assert after == before


def _supervised() -> dict[str, dict]:
    return {s["name"]: s for s in status_json()[1]["supervised"]}


def _until(check: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f}s: {_supervised()}"
        time.sleep(1.0)


@pytest.fixture
def supervised_consumers(healthy: LocalStack, schema: object) -> Iterator[list[str]]:
    retail("stack", "up", "--profile", "test", "--consumers", "1")
    yield [f"consumer-{r.dc}-1" for r in REGIONS]
    retail("stack", "up", "--profile", "test", "--consumers", "0")  # drains and stops them


def test_up_runs_supervised_consumers_and_a_killed_one_comes_back(
    supervised_consumers: list[str], healthy: LocalStack, topology: Topology
) -> None:
    consumers = _supervised()
    assert sorted(consumers) == sorted(supervised_consumers)
    assert all(c["state"] == "running" and c["restarts"] == 0 for c in consumers.values())
    # `up` again with the same services changes nothing.
    before = {c.name: c.process.pid() for c in healthy.components(topology)}
    retail("stack", "up", "--profile", "test", "--consumers", "1")
    assert {c.name: c.process.pid() for c in healthy.components(topology)} == before
    assert {n: c["pid"] for n, c in _supervised().items()} == {
        n: c["pid"] for n, c in consumers.items()
    }

    killed = consumers["consumer-us-east-1"]
    assert "consumer-us-east-1" in retail("stack", "kill", "consumer-us-east-1").stderr
    _until(
        lambda: (
            (c := _supervised()["consumer-us-east-1"])["state"] == "running" and c["restarts"] == 1
        ),
        "the killed consumer running again",
    )
    back = _supervised()["consumer-us-east-1"]
    assert back["pid"] != killed["pid"]
    assert back["last_exit"] == -9  # SIGKILL
    human = retail("stack", "status", check=False).stdout
    assert "Supervised services" in human and "consumer-us-east-1" in human

    # Events still flow through every region's consumers, the restarted one included: each
    # region's group commits all of them (a consumer commits only after its writes).
    retail("produce", "--count", "600")
    _until(
        lambda: all(c["lag"] == 0 for c in _supervised().values()),
        "every region's group caught up",
    )
    log = retail("stack", "logs", "consumer-us-east-1", "-n", "200").stdout
    assert log.count("--- started") >= 2


def test_down_stops_the_supervised_consumers_with_the_rest(
    supervised_consumers: list[str], healthy: LocalStack
) -> None:
    pids = [c["pid"] for c in _supervised().values()]
    assert all(pids)
    healthy.services.process.stop(timeout=120)  # what `down` does first, before the servers
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists()
    assert all(c["state"] == "down" for c in _supervised().values())


def test_nodetool_runs_against_a_node(healthy: LocalStack, topology: Topology) -> None:
    out = retail("stack", "nodetool", "us-east-1", "status").stdout
    for node in topology.nodes:
        assert f"UN  {node.address}" in out


def test_logs_show_the_end_of_a_nodes_system_log(healthy: LocalStack) -> None:
    out = retail("stack", "logs", "eu-west-1", "-n", "5").stdout
    assert "system.log" in out


def test_a_killed_node_shows_down_and_start_brings_it_back(healthy: LocalStack) -> None:
    retail("stack", "kill", "us-east-1")
    code, st = status_json()
    assert code == 1
    states = {n["name"]: n["state"] for n in st["nodes"]}
    assert states["us-east-1"] == "DN"
    assert states["eu-west-1"] == "UN"

    retail("stack", "start", "us-east-1")
    code, st = status_json()
    assert code == 0, st
    assert all(n["state"] == "UN" for n in st["nodes"])


def test_a_write_acknowledged_just_before_its_node_crashes_is_still_there_after(
    healthy: LocalStack, topology: Topology, schema: object
) -> None:
    """A consumer commits its Kafka offsets once its writes are acknowledged, so a node that
    crashes must not lose what it acknowledged. With the periodic commit log it did: the tail
    written since the last sync marker (up to the sync period) was not replayed at restart."""
    node = next(c for c in healthy.components(topology) if c.name == "us-east-1")
    cluster, session = connect(topology, "us-east", role=CASSANDRA_CONSUMER)
    insert = session.prepare(
        "INSERT INTO retail.inventory_movements (event_id, store_id, region, sku, kind, "
        "quantity, event_time, source) VALUES (?, 'store-crash', 'us-east', 'SKU-1', 'delta', "
        "1, ?, 'crash test')"
    )
    ids = [f"crash-{uuid.uuid4()}" for _ in range(40)]
    try:
        for event_id in ids:  # each acknowledged at LOCAL_QUORUM before the next
            session.execute(insert, (event_id, datetime.now(UTC)))
        # SIGKILL at once (no sync of the commit log in between), and wait until it is gone.
        assert node.process.kill()
    finally:
        cluster.shutdown()
    retail("stack", "start", "us-east-1")

    cluster, session = connect(
        topology, "us-east", role=CASSANDRA_CONSUMER, pin_to_dc=True, consistency_level="LOCAL_ONE"
    )
    try:
        read = session.prepare("SELECT event_id FROM retail.inventory_movements WHERE event_id = ?")
        lost = [i for i in ids if session.execute(read, (i,)).one() is None]
        delete = session.prepare("DELETE FROM retail.inventory_movements WHERE event_id = ?")
        for event_id in ids:
            session.execute(delete, (event_id,))
    finally:
        cluster.shutdown()
    assert lost == [], f"{len(lost)} of {len(ids)} acknowledged writes lost by the crash"


def _processes_in(directory: Path) -> list[int]:
    """PIDs of every process whose working directory is inside ``directory``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if cwd.startswith(str(directory)):
            found.append(int(proc.name))
    return found


@pytest.mark.stops_stack
def test_down_stops_everything_it_started(local_stack: LocalStack, topology: Topology) -> None:
    pids = [c.process.pid() for c in local_stack.components(topology)]
    assert all(pids)
    retail("stack", "down")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.2)
    assert not [
        p
        for p in pids
        if Path(f"/proc/{p}/stat").exists()
        and Path(f"/proc/{p}/stat").read_text().split(") ")[1][0] != "Z"
    ]
    assert _processes_in(local_stack.dir) == []
    code, st = status_json()
    assert code == 1
    assert {s["state"] for s in st["services"]} == {"down"}
