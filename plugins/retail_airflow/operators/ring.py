"""Ring maintenance from Airflow: cleanup of the nodes that gave up ranges after a join, with
ownership and load before and after (logic in retail.ops.ring)."""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from retail.catalog import catalog
from retail.connections import CASSANDRA_CONN_ID, STATSD_CONN_ID
from retail.jolokia import JolokiaError
from retail.ops import ring
from retail.ops.ring import RingRefused
from retail_airflow.hooks import RetailCassandraHook, RetailStatsdHook

# A DC or node name as the topology spells them (eu-west, eu-west-1): one StatsD name part.
NAME_PATTERN = r"^[a-z][a-z0-9-]{0,39}$"


def _is_template(value: object) -> bool:
    return isinstance(value, str) and "{{" in value


def check_params(dcs: object, nodes: object, dry_run: object) -> tuple[list[str], list[str], bool]:
    """The parameters as the task uses them, or ValueError saying what is allowed. The topology
    (which DCs and nodes exist) is checked when the task runs: it lives in the connection."""
    picked: dict[str, list[str]] = {}
    for what, value in (("dcs", dcs), ("nodes", nodes)):
        if value is None:
            value = []
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{what} must be a list of names, got {value!r}")
        bad = [v for v in value if not re.fullmatch(NAME_PATTERN, v)]
        if bad:
            raise ValueError(f"{what}: {bad} are not names like eu-west or eu-west-1")
        picked[what] = list(dict.fromkeys(value))  # in order, each once
    if not isinstance(dry_run, bool):
        raise ValueError(f"dry_run must be true or false, got {dry_run!r}")
    return picked["dcs"], picked["nodes"], dry_run


class RingMaintenanceOperator(BaseOperator):
    """After a node joined: refuse unless every node is UN and no repair runs, then clean up
    (``nodetool cleanup``) the platform's keyspaces on the chosen nodes one at a time, and
    report every node's ownership and load before and after: StatsD gauges
    (``retail_ring_owns``, ``retail_ring_load_bytes`` with ``phase``; the cleanup's
    ``retail_ring_cleanup_in_progress`` and ``retail_ring_cleanup_nodes_remaining``), the task
    log, and the returned summary (XCom).

    ``dcs``: the DCs whose nodes are cleaned up (empty: all); ``nodes``: only these nodes of
    them; ``dry_run``: report the ring, the nodes that would be cleaned up and any reason to
    refuse, and change nothing.
    """

    template_fields = ("dcs", "nodes", "dry_run")

    def __init__(
        self,
        *,
        dcs: list[str] | str | None = None,
        nodes: list[str] | str | None = None,
        dry_run: bool | str = False,
        cassandra_conn_id: str = CASSANDRA_CONN_ID,
        statsd_conn_id: str = STATSD_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dcs = dcs
        self.nodes = nodes
        self.dry_run = dry_run
        self.cassandra_conn_id = cassandra_conn_id
        self.statsd_conn_id = statsd_conn_id
        # Values written into the DAG are checked when it is parsed; templates once rendered.
        check_params(
            [] if _is_template(dcs) else dcs,
            [] if _is_template(nodes) else nodes,
            False if _is_template(dry_run) else dry_run,
        )

    def execute(self, context: Any) -> dict[str, Any]:
        try:
            dcs, nodes, dry_run = check_params(self.dcs, self.nodes, self.dry_run)
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from None
        hook = RetailCassandraHook(self.cassandra_conn_id)
        metrics = RetailStatsdHook(self.statsd_conn_id).metrics
        topology = hook.topology()
        keyspaces = list(catalog().keyspaces)
        try:
            targets = ring.choose_nodes(topology, dcs, nodes)
        except RingRefused as exc:
            raise AirflowFailException(str(exc)) from None
        self.log.info(
            "ring maintenance%s: cleanup of %s on %s, one node at a time",
            " (dry run: nothing changes)" if dry_run else "",
            ", ".join(keyspaces),
            ", ".join(n.name for n in targets) or "no node",
        )

        login = hook.jolokia_login
        views, unanswered = ring.read_views(topology, login)
        with hook.jolokia() as jolokia:
            sessions = ring.repair_sessions(jolokia, topology)
        found = ring.blockers(topology, views, unanswered, sessions)
        before = ring.snapshot(topology, views)
        sent = ring.publish(metrics, before, "before")
        self.log.info("ring before (%d gauges sent):", sent)
        for line in ring.summary_lines(before, None):
            self.log.info("  %s", line)
        result: dict[str, Any] = {
            "dry_run": dry_run,
            "keyspaces": keyspaces,
            "nodes": [n.name for n in targets],
            "before": before.to_dict(),
            "blockers": found,
        }
        if dry_run:
            for line in found:
                self.log.warning("a run now would be REFUSED: %s", line)
            self.log.info(
                "dry run: %s", "nothing stands in the way" if not found else "see the refusals"
            )
            return result | {"summary": ring.summary_lines(before, None)}
        if found:
            for line in found:
                self.log.error("REFUSED: %s", line)
            # Not retried: a node's state or a running repair is the operator's to change.
            raise AirflowFailException("ring maintenance refused to start: " + "; ".join(found))

        with hook.jolokia(timeout=ring.CLEANUP_HTTP_TIMEOUT) as jolokia:
            try:
                done = ring.cleanup(jolokia, targets, keyspaces, metrics, say=self.log.info)
            except (ring.RingError, JolokiaError) as exc:
                self.log.error("cleanup FAILED: %s", exc)
                raise  # retried: a node that stopped answering may be back
        views, unanswered = ring.read_views(topology, login)
        after = ring.snapshot(topology, views)
        sent = ring.publish(metrics, after, "after")
        summary = ring.summary_lines(before, after)
        self.log.info("ring after (%d gauges sent):", sent)
        for line in summary:
            self.log.info("  %s", line)
        if unanswered:
            self.log.warning("not answering after the cleanup: %s", ", ".join(unanswered))
        return result | {
            "cleanups": [asdict(c) for c in done],
            "after": after.to_dict(),
            "summary": summary,
        }
