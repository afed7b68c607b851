"""``retail chaos``: a steady stream into the running stack while a seeded schedule of faults
hits every part of it, then the check from outside that nothing was lost or counted twice
(:mod:`retail.chaos`).

The faults, carried out here on the local stack:

* ``consumer_kill``: SIGKILL of a supervised consumer; the supervisor starts it again;
* ``node_kill``: SIGKILL of a Cassandra node, restarted after a while;
* ``dc_stop``: every node of a DC stopped (SIGTERM) for a minute, then started;
* ``broker_kill``: SIGKILL of a Kafka broker, restarted after a while;
* ``node_freeze``: SIGSTOP of a Cassandra node until another node's failure detector marks it
  down (and at least 30 s), then SIGCONT;
* ``scheduler_kill``: a ``balance_check`` run triggered, the Airflow scheduler killed while a
  task runs and started again; the run must still succeed.

A fault's *recovery* is the time from its repair (restart, thaw) until the part is healthy
again: the node UN in every other node's view, the broker in the metadata, the consumer running
again, Airflow's scheduler healthy.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated

import httpx
import typer
from confluent_kafka import KafkaException
from rich.console import Console

from retail import jolokia
from retail.chaos import (
    BROKER_KILL,
    CONSUMER_KILL,
    DC_STOP,
    KINDS,
    NODE_FREEZE,
    NODE_KILL,
    SCHEDULER_KILL,
    ChaosResult,
    Done,
    Fault,
    Targets,
    plan,
    reconcile,
)
from retail.errors import RetailError
from retail.fuzz import Sent, hostile_messages, produce, wait_consumed
from retail.generator import StreamGenerator
from retail.kafka import Topics, region_lag
from retail.ops import repair
from retail.rows import KEYSPACE
from retail.topology import Topology
from stack.airflow import AirflowServers, trigger_while_running, wait_for_run
from stack.fuzz import consumer_restarts
from stack.local import LocalStack

console = Console(stderr=True)

AUDITED_DAG = "balance_check"  # the run the scheduler kill interrupts: short, reads only
REPAIR_DAG = "materialized_view_rebuild"


class Injector:
    """Carries out faults on the local stack; times are seconds after ``t0``."""

    def __init__(self, stack: LocalStack, topology: Topology, t0: float) -> None:
        self.stack = stack
        self.topology = topology
        self.t0 = t0
        self.airflow = AirflowServers(topology, stack.dir)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def inject(self, fault: Fault) -> Done:
        act: Callable[[Fault], tuple[float, float, str]] = {
            CONSUMER_KILL: self._consumer_kill,
            NODE_KILL: self._node_kill,
            DC_STOP: self._dc_stop,
            BROKER_KILL: self._broker_kill,
            NODE_FREEZE: self._node_freeze,
            SCHEDULER_KILL: self._scheduler_kill,
        }[fault.kind]
        started = self.now()
        repaired, recovery, detail = act(fault)
        return Done(fault, started, repaired, recovery, detail)

    def _healthy_after(self, start: Callable[[], object]) -> tuple[float, float]:
        """(when the repair began, seconds until ``start`` returned: ready)."""
        repaired = self.now()
        start()
        return repaired, self.now() - repaired

    def _consumer_kill(self, fault: Fault) -> tuple[float, float, str]:
        services = self.stack.services
        pid = _until(lambda: _running_pid(self.stack, fault.target), 120, f"{fault.target} running")
        services.kill(fault.target)
        repaired = self.now()
        _until(
            lambda: (p := _running_pid(self.stack, fault.target)) not in (None, pid) or None,
            180,
            f"{fault.target} started again by the supervisor",
        )
        return repaired, self.now() - repaired, f"pid {pid}"

    def _node_kill(self, fault: Fault) -> tuple[float, float, str]:
        self.stack.kill(fault.target)
        time.sleep(fault.hold)
        return (*self._healthy_after(lambda: self.stack.start(fault.target, timeout=600)), "")

    def _dc_stop(self, fault: Fault) -> tuple[float, float, str]:
        nodes = [n.name for n in self.topology.datacenter(fault.target).nodes]
        for name in nodes:
            self.stack.stop(name)
        time.sleep(fault.hold)
        return (*self._healthy_after(lambda: self.stack.start(*nodes, timeout=600)), "")

    def _broker_kill(self, fault: Fault) -> tuple[float, float, str]:
        self.stack.kill(fault.target)
        time.sleep(fault.hold)
        return (*self._healthy_after(lambda: self.stack.start(fault.target, timeout=300)), "")

    def _node_freeze(self, fault: Fault) -> tuple[float, float, str]:
        node = self.topology.node(fault.target)
        watcher = next(n for n in self.topology.nodes if n is not node)
        login = self.stack.jolokia_login()
        proc = self.stack.process(fault.target)
        pid = proc.pid()
        if pid is None:
            raise RetailError(f"{fault.target} is not running")
        os.kill(pid, signal.SIGSTOP)
        frozen = time.monotonic()
        try:
            time.sleep(fault.hold)

            def seen_down() -> bool | None:
                try:
                    state = jolokia.ring_view(watcher, login).state(node.address)
                except jolokia.JolokiaError:
                    return None
                return True if state.startswith("D") else None

            _until(seen_down, 120, f"{watcher.name} marking {node.name} down")
            detail = f"{watcher.name} saw it down after {time.monotonic() - frozen:.0f}s"
        finally:
            os.kill(pid, signal.SIGCONT)
        return (*self._healthy_after(lambda: self.stack.start(fault.target, timeout=300)), detail)

    def _scheduler_kill(self, fault: Fault) -> tuple[float, float, str]:
        run_id = trigger_while_running(self.airflow.client(), AUDITED_DAG, {})
        scheduler = next(p for p in self.airflow.processes() if p.name == fault.target)
        scheduler.kill()
        time.sleep(2)

        def restart() -> None:
            scheduler.start()
            self.airflow.wait_healthy(300)

        repaired, recovery = self._healthy_after(restart)
        run = wait_for_run(self.airflow.client(), AUDITED_DAG, run_id, timeout=600)
        return repaired, recovery, f"{AUDITED_DAG} run {run['state']}"


def _repair(stack: LocalStack, topology: Topology) -> None:
    """A full primary-range repair of the platform's keyspace, node after node: what the
    ``replication_repair`` DAG runs (:mod:`retail.ops.repair`)."""
    with jolokia.Jolokia(login=stack.jolokia_login()) as client:
        ranges = repair.live_range_map(client, topology, KEYSPACE)
        steps = repair.plan(KEYSPACE, ranges, topology, scope="primary_range")

        def step_done(done: int, total: int, result: repair.StepResult, elapsed: float) -> None:
            console.print(f"  repair {done}/{total}: {result.step.describe()} ({elapsed:.0f}s)")

        repair.run(client, topology, steps, step_done)


def _pause(api: httpx.Client, dag_id: str, paused: bool) -> bool | None:
    """Pause or unpause ``dag_id``; returns whether it was paused (None: Airflow does not have
    it)."""
    got = api.get(f"/dags/{dag_id}")
    if got.status_code != 200:
        return None
    api.patch(f"/dags/{dag_id}", json={"is_paused": paused}).raise_for_status()
    return bool(got.json()["is_paused"])


def _running_pid(stack: LocalStack, name: str) -> int | None:
    for s in stack.services.status({}):
        if s.name == name and s.state == "running":
            return s.pid
    return None


def _until(probe: Callable[[], object], timeout: float, what: str) -> object:
    """``probe()`` once it returns something other than None, polled every second."""
    deadline = time.monotonic() + timeout
    while (got := probe()) is None:
        if time.monotonic() > deadline:
            raise RetailError(f"gave up waiting for {what} after {timeout:.0f}s")
        time.sleep(1.0)
    return got


def _targets(stack: LocalStack, topology: Topology) -> Targets:
    return Targets(
        consumers=tuple(s.name for s in stack.services.specs() if s.region),
        nodes=tuple(n.name for n in topology.nodes),
        dcs=tuple(dc.name for dc in topology.datacenters),
        brokers=tuple(b.name for b in topology.brokers),
    )


def chaos(
    duration: Annotated[
        float, typer.Option(help="Seconds the stream runs while the faults are injected.")
    ] = 600.0,
    rate: Annotated[float, typer.Option(help="Valid events per second in the stream.")] = 20.0,
    seed: Annotated[
        int, typer.Option(help="Decides the events, the faults and their targets.")
    ] = 1,
    faults: Annotated[
        str,
        typer.Option(help=f"Comma-separated fault kinds, or 'all': {', '.join(KINDS)}."),
    ] = "all",
    consumer_kills: Annotated[
        int, typer.Option(help="Consumer kills in the schedule (if consumer_kill is chosen).")
    ] = 12,
    invalid_every: Annotated[
        int, typer.Option(help="One invalid message per this many valid events (0: none).")
    ] = 100,
    check_timeout: Annotated[
        float,
        typer.Option(help="Seconds to drain the backlog, and again for the DCs to converge."),
    ] = 900.0,
    as_json: Annotated[bool, typer.Option("--json", help="The figures as JSON on stdout.")] = False,
) -> None:
    """Chaos on the running stack: stream events at RATE for DURATION seconds while a seeded
    schedule kills consumers, kills and restarts a Cassandra node, stops a whole DC for a
    minute, kills a Kafka broker, freezes a node past the failure detector and kills the
    Airflow scheduler mid-run; then reconcile every event in every table of every DC, every
    rollup with its base rows and every invalid message with the dead-letter topic. Needs a
    stack with supervised consumers (`make demo`; for scheduler_kill, its Airflow too). The
    stack's own supervised producer pauses during the run. Exits 1 on any loss."""
    stack = LocalStack()
    topology = stack.topology()
    targets = _targets(stack, topology)
    if not targets.consumers:
        raise RetailError(
            "the stack runs no supervised consumers; start them with "
            "`retail stack up --consumers 1` (or `make demo`)"
        )
    kinds = list(KINDS) if faults == "all" else [k.strip() for k in faults.split(",") if k]
    try:
        schedule = plan(seed, duration, kinds, targets, consumer_kills)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--faults") from None
    airflow = AirflowServers(topology, stack.dir)
    try:
        airflow.wait_healthy(5)
        api = airflow.client()
    except RetailError as exc:
        if SCHEDULER_KILL in kinds:
            raise RetailError(
                f"scheduler_kill needs the stack's Airflow ({exc}); start it with "
                "`retail stack airflow`, or leave the fault out (--faults ...)"
            ) from None
        api = None
    down = [n for n in (*targets.nodes, *targets.brokers) if not stack.process(n).alive()]
    if down:
        raise RetailError(f"{', '.join(down)} not running; `retail stack up` first")

    topics = Topics.from_settings()
    console.print(f"schedule (seed {seed}), {len(schedule)} faults over {duration:.0f}s:")
    for f in schedule:
        console.print(f"  {f.at:6.1f}s  {f.kind:<14} {f.target}")
    valid_n = int(rate * duration)
    invalid_n = valid_n // invalid_every if invalid_every else 0
    events = list(
        StreamGenerator(seed=seed, start=datetime.now(UTC), events_per_second=rate).events(
            valid_n + invalid_n
        )
    )
    bad = list(hostile_messages(events[valid_n:], topics, seed=seed, now=datetime.now(UTC)))
    restarts = consumer_restarts(stack)
    specs = stack.services.specs()
    paused = [s for s in specs if not s.region]
    if paused:
        console.print(f"pausing the supervised {', '.join(s.name for s in paused)}")
        stack.services.configure([s for s in specs if s.region])
    # The scheduled rollup repair would correct a bucket the faults made wrong before the check
    # sees it: paused for the run, as it was before afterwards.
    repair_paused = _pause(api, REPAIR_DAG, True) if api else None
    try:
        result = _run(
            stack, topology, topics, schedule, events[:valid_n], bad, seed, duration, check_timeout
        )
    finally:
        if paused:
            stack.services.configure(specs)
        if api is not None and repair_paused is not None:
            _pause(api, REPAIR_DAG, repair_paused)
    result.consumer_restarts = consumer_restarts(stack) - restarts
    for d in result.faults:
        console.print("  " + d.line())
    for line in result.findings.examples:
        console.print(f"  [red]{line}[/]")
    if as_json:
        print(json.dumps(result.to_dict()))
    console.print(result.summary(), style="green" if result.ok else "bold red")
    if not result.ok:
        raise typer.Exit(1)


def _run(
    stack: LocalStack,
    topology: Topology,
    topics: Topics,
    schedule: list[Fault],
    valid: list,
    bad: list,
    seed: int,
    duration: float,
    check_timeout: float,
) -> ChaosResult:
    t0 = time.monotonic()
    injector = Injector(stack, topology, t0)
    sent: list[Sent] = []
    done: list[Done] = []
    failures: list[str] = []

    def stream() -> None:
        sent.append(
            produce(
                topology,
                valid,
                bad,
                topics,
                seed=seed,
                rate=(len(valid) + len(bad)) / duration,
                strict=False,
            )
        )

    def carry_out(faults: list[Fault]) -> None:
        for fault in faults:
            if halt.wait(max(0.0, t0 + fault.at - time.monotonic())):
                return
            try:
                d = injector.inject(fault)
            except Exception as exc:  # any failure: reported, the check still runs
                failures.append(f"{fault.kind} {fault.target}: {type(exc).__name__}: {exc}")
                console.print(f"  [red]{fault.kind} {fault.target} failed: {exc}[/]")
                continue
            done.append(d)
            console.print("  " + d.line())

    # The fault threads are not daemons: if this thread fails (or Ctrl-C), the schedule halts,
    # but the process still waits for the fault in progress to be repaired (a frozen node
    # thawed, a stopped DC started) before it exits.
    halt = threading.Event()
    threads = [
        threading.Thread(target=stream, name="chaos-stream", daemon=True),
        threading.Thread(
            target=carry_out,
            args=([f for f in schedule if f.kind != CONSUMER_KILL],),
            name="chaos-faults",
        ),
        threading.Thread(
            target=carry_out,
            args=([f for f in schedule if f.kind == CONSUMER_KILL],),
            name="chaos-consumer-kills",
        ),
    ]
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(timeout=60)
            if any(t.is_alive() for t in threads):
                lag = sum(_lag(topology, topics, r) for r in topics.regions)
                console.print(f"{time.monotonic() - t0:5.0f}s: {len(done)} faults done, lag {lag}")
    except BaseException:
        halt.set()
        console.print("[red]stopping: waiting for the fault in progress to be repaired[/]")
        raise
    if not sent:
        raise RetailError("the chaos stream's producer failed before sending; see above")
    console.print("stream and faults done; waiting for the consumers to drain")
    wait_consumed(topology, topics, check_timeout)
    console.print("drained; reading every table of every DC and the dead-letter topic")
    findings = reconcile(
        topology,
        topics,
        sent[0],
        timeout=check_timeout,
        repair=lambda: _repair(stack, topology),
        progress=console.print,
    )
    done.sort(key=lambda d: d.started)
    return ChaosResult(time.monotonic() - t0, findings, done, 0, failures)


def _lag(topology: Topology, topics: Topics, region: str) -> int:
    """The region's lag for the progress line; -1 while Kafka cannot tell (a broker down)."""
    try:
        return region_lag(topology, topics, region)
    except (RetailError, KafkaException):
        return -1
