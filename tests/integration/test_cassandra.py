"""The three-DC Cassandra cluster replicates across DCs as the topology says."""

from __future__ import annotations

import uuid

from cassandra.query import SimpleStatement

from retail.cassandra import connect, consistency, wait_for_schema_agreement
from retail.credentials import CASSANDRA_OPS
from retail.topology import Topology

KEYSPACE = "it_replication"


def test_a_local_quorum_write_in_one_dc_reads_back_at_local_one_in_every_other(
    topology: Topology,
) -> None:
    home = topology.datacenters[0]
    cluster, session = connect(topology, home.name, role=CASSANDRA_OPS)
    try:
        session.execute(
            f"CREATE KEYSPACE IF NOT EXISTS {KEYSPACE} "
            f"WITH replication = {topology.replication_cql()}"
        )
        session.execute(f"CREATE TABLE IF NOT EXISTS {KEYSPACE}.kv (k uuid PRIMARY KEY, v text)")
        wait_for_schema_agreement(cluster, "creating the table", timeout=60)

        row = session.execute(
            "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s", [KEYSPACE]
        ).one()
        assert row.replication["class"].endswith("NetworkTopologyStrategy")
        assert {dc: int(rf) for dc, rf in row.replication.items() if dc != "class"} == {
            dc.name: dc.replication_factor for dc in topology.datacenters
        }

        key, value = uuid.uuid4(), f"written in {home.name}"
        session.execute(
            SimpleStatement(
                f"INSERT INTO {KEYSPACE}.kv (k, v) VALUES (%s, %s)",
                consistency_level=consistency("LOCAL_QUORUM"),
            ),
            [key, value],
        )
    finally:
        cluster.shutdown()

    for dc in topology.datacenters[1:]:
        # Pinned to the DC's own nodes at LOCAL_ONE: the answer comes from that DC's replica.
        remote, rsession = connect(
            topology, dc.name, consistency_level="LOCAL_ONE", pin_to_dc=True, role=CASSANDRA_OPS
        )
        try:
            rows = rsession.execute(f"SELECT v FROM {KEYSPACE}.kv WHERE k = %s", [key])
            got = rows.one()
            assert got is not None and got.v == value, f"{dc.name} does not have the row"
            coordinator = rows.response_future.coordinator_host
            assert coordinator in dc.contact_points, coordinator
        finally:
            remote.shutdown()
