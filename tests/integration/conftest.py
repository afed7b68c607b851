"""The real local stack, started once per test session (or reused if one is already running).

Like ccm's tests, the session fails if a server log shows an ERROR that no test expected.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from retail.topology import Topology, profile_topology
from stack.local import LocalStack
from stack.status import collect
from tests.integration.pipeline import PipelineRun

log = logging.getLogger(__name__)

RETAIL = [str(Path(sys.executable).with_name("retail"))]  # the command a user runs

# ERROR lines that a test provokes on purpose or that the servers log in normal operation.
EXPECTED_ERRORS = [
    # Kafka's first controller registration at start-up, over the controller listener's mutual
    # TLS, can outlast its channel's first attempt on a loaded machine: logged at ERROR, retried
    # at once and acknowledged (kafka.server.ControllerRegistrationManager).
    re.compile(r"RegistrationResponseHandler: channel manager timed out before sending the"),
    # A broker that gets a replica of a topic it held none of (a partition reassignment: the
    # kafka_rebalance test) logs its creation at ERROR on Kafka 4.3 (state.change.logger);
    # normal, and lowered to INFO upstream (KAFKA-20118, apache/kafka#21470).
    re.compile(r"Expected partition \S+ with topic id \S+ to exist, but it was missing\. Creating"),
    # A node killed with SIGKILL by the failover test: its peers log the broken connections.
    re.compile(r"Connection reset by peer|Broken pipe|Connection refused"),
    # The same, as Cassandra's internode messaging logs it (rate-limited, without the cause)
    # while a peer a test stopped on purpose is down: `...-SMALL_MESSAGES-[no-channel] failed
    # to connect`.
    re.compile(r"-\[no-channel\] failed to connect$"),
    # Cassandra 5.0's own leak detector (Ref.java, thread Reference-Reaper) when the garbage
    # collector finds a reader of a Paxos uncommitted-state file (`system/_paxos_repair_state/
    # <keyspace>-<table>-<id>-<n>.paxos`, the tracker behind the LWTs of the migration lock)
    # that Cassandra did not close; the reaper closes it. Seen once in a fresh-clone CI run, at
    # GC time, with every test passing; nothing of ours holds those files.
    # Its checksum file's reader too (`....paxos.crc`): seen in a later run, right after
    # Cassandra merged those files ("paxos uncommitted merge completed") and at its drain.
    re.compile(
        r"LEAK DETECTED: a reference \(class \S+ChannelProxy\$Cleanup@\d+:\S+"
        r"/_paxos_repair_state/\S+\.paxos(\.crc)?\)"
    ),
]
# Expected ERROR entries recognised by the exception under their line, not the line alone.
EXPECTED_ENTRIES = [
    # Cassandra's SizeEstimatesRecorder (every 5 minutes) opens each keyspace of the schema it
    # read a moment before; one dropped in between (the migrations test's scratch keyspace)
    # fails Keyspace's "Unknown keyspace" assertion in that run, and the next run does not list
    # it. Matched with the exception under the line, and only for that keyspace.
    re.compile(
        r"Exception in thread Thread\[OptionalTasks.*\n\s*java\.lang\.AssertionError: Unknown "
        r"keyspace migration_rail_test\n(?:\s*at .*\n)*?\s*at org\.apache\.cassandra\.db\."
        r"SizeEstimatesRecorder\.run"
    ),
]


def retail(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the `retail` command as a user would."""
    done = subprocess.run(
        [*RETAIL, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"retail {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
    return done


def status_json() -> tuple[int, dict]:
    done = retail("stack", "status", "--json", check=False)
    return done.returncode, json.loads(done.stdout)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Checks of the whole platform's metrics run after the tests that produce them (the DAGs,
    # the pipeline); tests that stop the whole stack run after everything.
    items.sort(
        key=lambda item: (
            item.get_closest_marker("stops_stack") is not None,
            item.get_closest_marker("late") is not None,
        )
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "stops_stack: stops the shared stack; runs last")
    config.addinivalue_line("markers", "late: needs the metrics of the other tests; runs late")


@pytest.fixture(scope="session")
def local_stack() -> Iterator[LocalStack]:
    stack = LocalStack()
    wanted = profile_topology("test")
    reuse = stack.saved_topology() == wanted and bool(stack.running(wanted))
    if reuse:
        log.info("reusing the running stack in %s", stack.dir)
    else:
        stack.down(purge=True)
    # Judge only what the servers log from here on: a reused stack's earlier history (its
    # own restarts) is not this session's doing; a fresh stack's start-up is.
    offsets = {
        path: path.stat().st_size if path.exists() else 0 for path in _server_logs(stack, wanted)
    }
    try:
        stack.up(wanted, timeout=300 if reuse else 600)
        yield stack
        _check_server_logs(offsets)
    finally:
        # Whatever failed (the start-up itself, or the logs' check), a stack this session
        # started does not outlive it: the next session, or another clone's, needs the ports.
        if not reuse:
            stack.down()


@pytest.fixture(scope="session")
def airflow(topology: Topology) -> None:
    """This process's Airflow pointed at the live stack (metadata DB migrated) and the schema
    applied: what every dag.test() run needs."""
    from retail import migrations
    from retail.cassandra import connect
    from retail.credentials import CASSANDRA_OPS
    from tests.integration.airflow import prepare_airflow

    prepare_airflow(topology)
    cluster, session = connect(topology, topology.datacenters[0].name, role=CASSANDRA_OPS)
    try:
        migrations.migrate(cluster, session, topology)
    finally:
        cluster.shutdown()


@pytest.fixture(scope="session")
def topology(local_stack: LocalStack) -> Topology:
    return local_stack.topology()


def _server_logs(stack: LocalStack, topology: Topology) -> list[Path]:
    return [
        c.process.main_log for c in stack.components(topology) if c.kind in ("cassandra", "kafka")
    ]


# The start of a log entry: Cassandra's `LEVEL [thread] ...` or Kafka's `[timestamp] LEVEL ...`.
_LOG_ENTRY = re.compile(r"^(TRACE|DEBUG|INFO|WARN|ERROR)\s|^\[\d{4}-")


def _check_server_logs(offsets: dict[Path, int]) -> None:
    unexpected: list[str] = []
    for path, offset in offsets.items():
        if not path.exists():
            continue
        if path.stat().st_size < offset:
            # Purged and written anew since the offset was taken (a module that brings up a
            # stack of its own, then this one again): all of it is this session's doing.
            offset = 0
        with path.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        lines = text.splitlines()
        for i, line in enumerate(lines):
            is_error = line.startswith("ERROR") or " ERROR " in line[:40]
            if not is_error:
                continue
            # The line and the exception under it (what says why), up to the next entry.
            cause = list(itertools.takewhile(lambda s: not _LOG_ENTRY.match(s), lines[i + 1 :]))
            entry = "\n".join([line, *cause])
            expected = any(p.search(line) for p in EXPECTED_ERRORS) or any(
                p.search(entry) for p in EXPECTED_ENTRIES
            )
            if not expected:
                shown = "\n    ".join(s[:300] for s in [line, *cause[:12]])
                unexpected.append(f"{path}: {shown}")
    assert not unexpected, "unexpected ERROR lines in server logs:\n" + "\n".join(unexpected[:20])


@pytest.fixture(scope="module")
def schema(topology: Topology) -> Iterator[object]:
    """A session on the first DC, the schema migrated."""
    from retail import migrations
    from retail.cassandra import connect
    from retail.credentials import CASSANDRA_OPS

    cluster, session = connect(topology, topology.datacenters[0].name, role=CASSANDRA_OPS)
    migrations.migrate(cluster, session, topology)
    yield session
    cluster.shutdown()


@pytest.fixture
def run(schema: object, topology: Topology, tmp_path: Path) -> Iterator[PipelineRun]:
    """A pipeline run of its own (topics, groups, consumers) on empty tables."""
    r = PipelineRun(topology, schema, tmp_path)  # type: ignore[arg-type]
    r.truncate()
    yield r
    r.stop_consumers()


@pytest.fixture
def healthy(local_stack: LocalStack) -> LocalStack:
    """The stack, asserted fully up before the test starts."""
    st = collect(local_stack)
    assert st.ok, json.dumps(st.to_dict(), indent=2)
    return local_stack
