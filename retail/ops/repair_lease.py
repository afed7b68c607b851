"""What keeps repairs of one keyspace apart, and what a failed try left running.

* **The lease**: one repair per keyspace at a time, a lightweight transaction on
  ``retail_ops.repair_lease`` renewed by a heartbeat (:class:`Lease`).
* **Leftovers**: the sessions a try started, recorded in ``retail_ops.repair_inflight`` as their
  node accepts them, so that a retry first waits for (or stops) what the failed try left running
  (:func:`settle_leftovers`).

The repair itself is :mod:`retail.ops.repair`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cassandra import ConsistencyLevel, DriverException, RequestExecutionException
from cassandra.cluster import NoHostAvailable, Session
from cassandra.query import SimpleStatement

from retail.jolokia import STORAGE_SERVICE, Jolokia
from retail.ops.repair import RepairError, RepairStep
from retail.rows import as_utc
from retail.topology import CassandraNode, Topology

log = logging.getLogger(__name__)


# -- no two repairs of one keyspace at once: the lease -------------------------------------------
#
# Granularity: a keyspace. Every table of a keyspace shares its token ranges and replicas, and
# any two scopes (primary_range, datacenter:<dc>) of one keyspace overlap on some node's ranges,
# so "the same ranges" is "the same keyspace"; finer leases (per table, per DC) would let two
# repairs validate and stream the same ranges on the same nodes. Repairs of different keyspaces
# may run together (the DAG itself runs one keyspace at a time, one run at a time).
#
# Owner: the Airflow task instance (dag/run/task[/map index]); its try number is kept apart.
# A later try of the same task instance takes the lease over (Airflow runs one try at a time,
# so the earlier one is dead or a zombie; the zombie's next renewal then fails and it stops
# before its next session). Any other owner is waited for, up to a bound, then refused.
#
# The row lives LEASE_TTL_SECONDS after its last renewal, so a holder killed without a word
# blocks the keyspace for that long at most; a heartbeat renews it while the repair runs.
# Every statement is a lightweight transaction at SERIAL (Paxos across all DCs): LOCAL_SERIAL
# would let one holder per DC in.

LEASE_TABLE = "retail_ops.repair_lease"
INFLIGHT_TABLE = "retail_ops.repair_inflight"
LEASE_TTL_SECONDS = 300
HEARTBEAT_SECONDS = 60.0
# What a session left running by a dead try is remembered for (it cannot run longer than a
# day: Cassandra's repair sessions time out well before).
INFLIGHT_TTL_SECONDS = 2 * 24 * 3600
REPAIR_SERVICE = "org.apache.cassandra.db:type=RepairService"


class LeaseHeld(RepairError):
    """Another repair holds the keyspace's lease (retryable: it ends, or its lease expires)."""


class LeaseLost(RepairError):
    """This repair's lease was taken over or expired; it stops before its next session."""


@dataclass(frozen=True)
class Claim:
    """Who asks for a lease: the task instance and its try."""

    owner: str
    try_number: int

    @classmethod
    def of(cls, context: Mapping[str, Any]) -> Claim:
        """From an Airflow task context: ``dag/run/task`` (``[i]`` when mapped) and the try."""
        ti = context["ti"]
        owner = f"{ti.dag_id}/{ti.run_id}/{ti.task_id}"
        if getattr(ti, "map_index", -1) not in (-1, None):
            owner += f"[{ti.map_index}]"
        return cls(owner, int(ti.try_number))


@dataclass(frozen=True)
class Holder:
    """The lease row as stored: who holds the keyspace, since when, for what."""

    owner: str
    try_number: int
    acquired_at: datetime | None
    renewed_at: datetime | None
    scope: str | None

    def describe(self) -> str:
        since = "an unknown time" if self.acquired_at is None else as_utc(self.acquired_at)
        renewed = "" if self.renewed_at is None else f", last renewed {as_utc(self.renewed_at)}"
        return f"{self.owner} (try {self.try_number}, {self.scope}) since {since}{renewed}"


FREE, MINE, TAKE_OVER, WAIT = "free", "mine", "take_over", "wait"


def decide(claim: Claim, holder: Holder | None) -> str:
    """What ``claim`` may do about the lease ``holder`` has (``None``: nobody)."""
    if holder is None:
        return FREE
    if holder.owner != claim.owner:
        return WAIT
    if holder.try_number == claim.try_number:
        return MINE
    # An earlier try of this task instance is over; a later one means this try is the zombie.
    return TAKE_OVER if holder.try_number < claim.try_number else WAIT


def _lwt(cql: str) -> SimpleStatement:
    return SimpleStatement(
        cql,
        consistency_level=ConsistencyLevel.QUORUM,
        serial_consistency_level=ConsistencyLevel.SERIAL,
    )


def _holder(row: Any) -> Holder | None:
    if row is None or getattr(row, "owner", None) is None:
        return None
    return Holder(row.owner, row.try_number or 0, row.acquired_at, row.renewed_at, row.scope)


class LeaseStore:
    """The lease rows in ``retail_ops.repair_lease``, every change a lightweight transaction."""

    def __init__(self, session: Session, ttl: int = LEASE_TTL_SECONDS) -> None:
        self.session = session
        self.ttl = ttl

    def insert(self, keyspace: str, claim: Claim, scope: str, now: datetime) -> Holder | None:
        """Take a free lease; ``None`` if taken, else the holder found."""
        row = self.session.execute(
            _lwt(
                f"INSERT INTO {LEASE_TABLE} (keyspace_name, owner, try_number, acquired_at, "
                "renewed_at, scope) VALUES (%s, %s, %s, %s, %s, %s) IF NOT EXISTS "
                f"USING TTL {self.ttl}"
            ),
            [keyspace, claim.owner, claim.try_number, now, now, scope],
        ).one()
        return None if row.applied else _holder(row)

    def renew(
        self,
        keyspace: str,
        claim: Claim,
        scope: str,
        now: datetime,
        *,
        acquired_at: datetime,
        expect: Claim | None = None,
    ) -> bool:
        """Rewrite the lease for ``claim`` if ``expect`` (default: ``claim``) holds it.

        Every column is written again, not only ``renewed_at``: a TTL belongs to each cell, and
        an UPDATE does not renew the row marker the INSERT wrote, so a cell left out would
        expire under a lease that is still held.
        """
        expect = expect or claim
        row = self.session.execute(
            _lwt(
                f"UPDATE {LEASE_TABLE} USING TTL {self.ttl} SET owner = %s, try_number = %s, "
                "acquired_at = %s, renewed_at = %s, scope = %s WHERE keyspace_name = %s "
                "IF owner = %s AND try_number = %s"
            ),
            [
                claim.owner,
                claim.try_number,
                acquired_at,
                now,
                scope,
                keyspace,
                expect.owner,
                expect.try_number,
            ],
        ).one()
        return bool(row.applied)

    def release(self, keyspace: str, claim: Claim) -> bool:
        """Delete the lease if ``claim`` still holds it (never someone else's)."""
        row = self.session.execute(
            _lwt(
                f"DELETE FROM {LEASE_TABLE} WHERE keyspace_name = %s "
                "IF owner = %s AND try_number = %s"
            ),
            [keyspace, claim.owner, claim.try_number],
        ).one()
        return bool(row.applied)


class Lease:
    """One keyspace's repair lease for ``claim``: :meth:`acquire` waits for it (bounded, a
    progress line per poll), a heartbeat thread renews it, :meth:`check` raises once it is
    lost, :meth:`release` gives it back."""

    def __init__(
        self,
        store: LeaseStore,
        keyspace: str,
        claim: Claim,
        scope: str,
        *,
        wait_seconds: float = 900.0,
        poll_seconds: float = 15.0,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        say: Callable[[str], None] = log.info,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.keyspace = keyspace
        self.claim = claim
        self.scope = scope
        self.wait_seconds = wait_seconds
        self.poll_seconds = poll_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.say = say
        self.clock = clock
        self.sleep = sleep
        self.now = now
        self.acquired_at: datetime | None = None
        self.lost: str | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def acquire(self) -> Holder | None:
        """Hold the lease or raise :class:`LeaseHeld` naming the holder after ``wait_seconds``;
        returns the earlier try's lease this one took over, if any."""
        start = self.clock()
        while True:
            now = self.now()
            holder = self.store.insert(self.keyspace, self.claim, self.scope, now)
            decision = decide(self.claim, holder)
            if decision == FREE:
                self.acquired_at = now
                self._start_heartbeat()
                return None
            assert holder is not None
            if decision == MINE:
                self.acquired_at = holder.acquired_at or now
                self._start_heartbeat()
                return None
            if decision == TAKE_OVER and self.store.renew(
                self.keyspace,
                self.claim,
                self.scope,
                now,
                acquired_at=now,
                expect=Claim(holder.owner, holder.try_number),
            ):
                self.say(f"{self.keyspace}: took the lease over from {holder.describe()}")
                self.acquired_at = now
                self._start_heartbeat()
                return holder
            waited = self.clock() - start
            if waited >= self.wait_seconds:
                raise LeaseHeld(
                    f"{self.keyspace}: another repair holds the keyspace: "
                    f"{holder.describe()}; waited {waited:.0f}s for it. A retry asks again; "
                    f"if that repair died, its lease expires {self.store.ttl}s after its last "
                    f"renewal (row in {LEASE_TABLE})"
                )
            self.say(
                f"{self.keyspace}: waiting for the repair lease, held by {holder.describe()} "
                f"[{waited:.0f}s of at most {self.wait_seconds:.0f}s]"
            )
            self.sleep(min(self.poll_seconds, max(self.wait_seconds - waited, 0.1)))

    def _start_heartbeat(self) -> None:
        self._beat = threading.Thread(
            target=self._heartbeat, name=f"repair-lease-{self.keyspace}", daemon=True
        )
        self._beat.start()

    def _heartbeat(self) -> None:
        last = self.clock()
        while not self._stop.wait(self.heartbeat_seconds):
            if self.beat(last_success=last):
                last = self.clock()
            elif self.lost:
                return

    def beat(self, last_success: float | None = None) -> bool:
        """Renew once; ``True`` if renewed. A renewal refused means someone else holds the
        lease now: lost. A renewal that fails (a timeout) is tried again at the next beat,
        unless the lease may have expired by then (``last_success``: the last renewal's
        clock)."""
        assert self.acquired_at is not None
        try:
            renewed = self.store.renew(
                self.keyspace,
                self.claim,
                self.scope,
                self.now(),
                acquired_at=self.acquired_at,
            )
        except (DriverException, RequestExecutionException, NoHostAvailable) as exc:
            elapsed = 0.0 if last_success is None else self.clock() - last_success
            if elapsed + self.heartbeat_seconds < self.store.ttl:
                log.warning("%s: renewing the repair lease failed (%s)", self.keyspace, exc)
                return False
            self.lost = f"could not renew it for {elapsed:.0f}s ({exc}); it may have expired"
            return False
        if not renewed:
            self.lost = "another owner holds it now (taken over by a later try, or expired)"
        return renewed

    def check(self) -> None:
        """Raise :class:`LeaseLost` if the lease is no longer this repair's."""
        if self.lost:
            raise LeaseLost(
                f"{self.keyspace}: stopped before the next repair session: the lease was lost: "
                f"{self.lost}"
            )

    def release(self) -> bool:
        """Stop renewing and delete the lease if still held; ``False`` if it was not."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=30)
        return self.store.release(self.keyspace, self.claim)

    def abandon(self) -> None:
        """Stop renewing but keep the row: it expires by its TTL (a session may still run)."""
        self._stop.set()


# -- what a failed try left running ---------------------------------------------------------------


@dataclass(frozen=True)
class InFlight:
    """The repair session a task instance started last and had not seen finish."""

    owner: str
    try_number: int
    keyspace: str
    node: str
    command: int
    started_at: datetime | None
    what: str


class InFlightStore:
    """``retail_ops.repair_inflight``: one row per task instance, written as each session is
    accepted by its node, deleted when the task's repair is over."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def record(self, claim: Claim, step: RepairStep, command: int, now: datetime) -> None:
        self.session.execute(
            SimpleStatement(
                f"INSERT INTO {INFLIGHT_TABLE} (owner, try_number, keyspace_name, node, command, "
                f"started_at, what) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                f"USING TTL {INFLIGHT_TTL_SECONDS}",
                consistency_level=ConsistencyLevel.QUORUM,
            ),
            [
                claim.owner,
                claim.try_number,
                step.keyspace,
                step.node,
                command,
                now,
                step.describe(),
            ],
        )

    def get(self, owner: str) -> InFlight | None:
        row = self.session.execute(
            SimpleStatement(
                f"SELECT owner, try_number, keyspace_name, node, command, started_at, what "
                f"FROM {INFLIGHT_TABLE} WHERE owner = %s",
                consistency_level=ConsistencyLevel.QUORUM,
            ),
            [owner],
        ).one()
        if row is None:
            return None
        return InFlight(
            row.owner,
            row.try_number,
            row.keyspace_name,
            row.node,
            row.command,
            row.started_at,
            row.what,
        )

    def clear(self, owner: str) -> None:
        self.session.execute(
            SimpleStatement(
                f"DELETE FROM {INFLIGHT_TABLE} WHERE owner = %s",
                consistency_level=ConsistencyLevel.QUORUM,
            ),
            [owner],
        )


def session_counts(jolokia: Jolokia, nodes: Iterable[CassandraNode]) -> dict[str, int]:
    """Each node's parent repair sessions (``ActiveRepairService.parentRepairSessionsCount``):
    every repair the node coordinates or takes part in, of any keyspace, until cleaned up."""
    return {
        n.name: int(jolokia.exec(n, REPAIR_SERVICE, "parentRepairSessionsCount") or 0)
        for n in nodes
    }


def command_state(jolokia: Jolokia, node: CassandraNode, command: int) -> str:
    """``IN_PROGRESS``, ``COMPLETED``, ``FAILED``, or ``UNKNOWN`` (the node forgot it: it was
    restarted since, so nothing of it runs)."""
    status = jolokia.exec(node, STORAGE_SERVICE, "getParentRepairStatus", command)
    return str(status[0]) if status else "UNKNOWN"


def settle_leftovers(
    jolokia: Jolokia,
    topology: Topology,
    inflight: InFlight | None,
    *,
    timeout: float = 600.0,
    terminate: bool = True,
    poll_seconds: float = 10.0,
    say: Callable[[str], None] = log.info,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Before a retry repairs anything: wait for what the failed try left running.

    * The session the failed try had started (``inflight``, from its record) is polled until it
      ends; after ``timeout`` it is terminated on its coordinator (with ``terminate``:
      ``StorageService.forceTerminateAllRepairSessions`` ends every repair the node coordinates;
      the lease keeps other DAG repairs of the keyspace away, not a hand-run nodetool repair),
      or the retry fails.
    * Without a record (the try died between starting a session and writing it down), the
      nodes' parent repair sessions are counted; any found are waited for, up to ``timeout``,
      but never terminated: nothing says they are this task's. The retry then goes on.

    Returns what was found and done, for the task's XCom.
    """
    nodes = list(topology.nodes)
    counts = session_counts(jolokia, nodes)
    say(
        "repair sessions on the nodes before this retry: "
        + ", ".join(f"{name}: {n}" for name, n in counts.items())
    )
    found: dict[str, Any] = {"sessions": counts, "left_running": None, "outcome": "none"}
    start = clock()
    if inflight is not None:
        node = topology.node(inflight.node)
        found["left_running"] = f"#{inflight.command} on {inflight.node}: {inflight.what}"
        while True:
            state = command_state(jolokia, node, inflight.command)
            waited = clock() - start
            if state != "IN_PROGRESS":
                say(
                    f"repair #{inflight.command} left by try {inflight.try_number} "
                    f"({inflight.what}): {state}"
                )
                found["outcome"] = state.lower() if waited == 0 else f"waited: {state.lower()}"
                return found
            if waited >= timeout:
                break
            say(
                f"waiting for repair #{inflight.command} left running by try "
                f"{inflight.try_number} ({inflight.what}) [{waited:.0f}s of at most {timeout:.0f}s]"
            )
            sleep(poll_seconds)
        if not terminate:
            raise RepairError(
                f"repair #{inflight.command} left running by try {inflight.try_number} "
                f"({inflight.what}) is still running after {timeout:.0f}s; the retry does not "
                "start another on the same ranges. A later retry waits again"
            )
        say(
            f"terminating the repair sessions {inflight.node} coordinates: #{inflight.command} "
            f"({inflight.what}) still runs after {timeout:.0f}s"
        )
        jolokia.exec(node, STORAGE_SERVICE, "forceTerminateAllRepairSessions")
        deadline = clock() + 60
        while command_state(jolokia, node, inflight.command) == "IN_PROGRESS":
            if clock() > deadline:
                raise RepairError(
                    f"repair #{inflight.command} on {inflight.node} still runs a minute after "
                    "it was terminated; check the node's system.log. A later retry waits again"
                )
            sleep(1.0)
        found["outcome"] = "terminated"
        return found
    busy = {name: n for name, n in counts.items() if n}
    while busy and clock() - start < timeout:
        say(
            "waiting for repair sessions on "
            + ", ".join(f"{name} ({n})" for name, n in busy.items())
            + f" [{clock() - start:.0f}s of at most {timeout:.0f}s]"
        )
        sleep(poll_seconds)
        busy = {name: n for name, n in session_counts(jolokia, nodes).items() if n}
    if busy:
        say(
            "still running, not known to be this task's, left alone: "
            + ", ".join(f"{name} ({n})" for name, n in busy.items())
        )
        found["outcome"] = "others still running"
    elif counts != dict.fromkeys(counts, 0):
        found["outcome"] = "waited: all ended"
    return found
