"""The pipeline_audit DAG against the live stack: events run through the real regional
consumers audit clean (one of them stamped hours early by its producer's clock, still audited
by its offset); a base row deleted on purpose fails the audit, which names the event."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from cassandra import ConsistencyLevel
from cassandra.query import SimpleStatement
from confluent_kafka import Producer

from retail.cassandra import connect
from retail.credentials import CASSANDRA_OPS, KAFKA_PRODUCER
from retail.events import Order, encode
from retail.generator import StreamGenerator
from retail.kafka import REGION_HEADER, client_config
from retail.producer import Record
from retail.topology import Topology
from tests.integration import prom
from tests.integration.airflow import run_dag, task_states, xcom
from tests.integration.pipeline import PipelineRun

N = 600


@pytest.fixture(scope="module")
def consumed(
    topology: Topology, airflow: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple]:
    """N events and one invalid order through the three regional consumers, all committed."""
    cluster, session = connect(topology, topology.datacenters[0].name, role=CASSANDRA_OPS)
    run = PipelineRun(topology, session, tmp_path_factory.mktemp("audit"))
    # Order ids repeat across generator streams: start from empty tables (inside the lock).
    run.truncate()
    try:
        run.start_all()
        for proc in run.consumers.values():
            run.wait_assigned(proc)
        gen_start = datetime.now(UTC) - timedelta(minutes=5)
        gen = StreamGenerator(seed=23, stores_per_region=4, start=gen_start)
        events = list(gen.events(N))
        run.produce(events)
        # A producer whose clock is three hours behind: its message lands among the window's
        # offsets with a timestamp far before the window. It is audited all the same.
        skewed = next(
            e
            for e in StreamGenerator(seed=24, stores_per_region=4, start=gen_start).events(50)
            if isinstance(e, Order)
        )
        producer = Producer(client_config(topology, KAFKA_PRODUCER))
        producer.produce(
            run.topics.orders(skewed.region),
            key=skewed.store_id.encode(),
            value=encode(skewed),
            headers=[(REGION_HEADER, skewed.region.encode())],
            timestamp=int(time.time() * 1000) - 3 * 3600 * 1000,
        )
        assert producer.flush(30) == 0
        events.append(skewed)
        bad = Record(run.topics.orders("us-east"), b"store-0002", b'{"type": "order"}', "us-east")
        run.produce_records([bad])
        run.wait_consumed(timeout=120)
        yield run, session, events
    finally:
        run.stop_consumers()
        run.truncate()
        cluster.shutdown()


def audit(run: PipelineRun, capfd: pytest.CaptureFixture[str]) -> tuple[object, str]:
    dag_run = run_dag(
        "pipeline_audit", {"topic_prefix": run.prefix, "window_minutes": 15, "settle_minutes": 0}
    )
    out = capfd.readouterr()
    return dag_run, out.out + out.err


def report_of(dag_run: object) -> dict:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as s:
        row = (
            s.query(XComModel)
            .filter_by(dag_id="pipeline_audit", run_id=dag_run.run_id, key="report")  # type: ignore[attr-defined]
            .one()
        )
        return XComModel.deserialize_value(row)


def test_every_event_written_audits_clean(
    consumed: tuple, capfd: pytest.CaptureFixture[str]
) -> None:
    run, _, events = consumed
    dag_run, _ = audit(run, capfd)
    assert str(dag_run.state) == "success", task_states(dag_run)
    result = xcom(dag_run, "audit_window")
    topics = result["topics"]

    def total(kind: str, what: str) -> int:
        return sum(topics[run.topics.topic(r, kind)][what] for r in run.regions)

    n_orders = sum(isinstance(e, Order) for e in events)
    assert total("orders", "events") == n_orders
    assert total("inventory", "events") == len(events) - n_orders
    us_orders = topics[run.topics.orders("us-east")]
    assert (us_orders["invalid"], us_orders["deadlettered"]) == (1, 1)
    assert result["missing"] == 0
    assert total("orders", "pending") == total("inventory", "pending") == 0


def test_a_row_deleted_on_purpose_fails_the_audit_and_names_the_event(
    consumed: tuple, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    run, session, events = consumed
    victim = next(e for e in events if isinstance(e, Order) and e.region == "ap-southeast")
    # At ALL: every DC's replica gets the tombstone (newer than the row's event-time timestamp).
    session.execute(
        SimpleStatement(
            "DELETE FROM retail.orders_by_store_day "
            "WHERE store_id = %s AND day = %s AND event_time = %s AND order_id = %s",
            consistency_level=ConsistencyLevel.ALL,
        ),
        (victim.store_id, victim.event_time.date(), victim.event_time, victim.order_id),
    )
    dag_run, told = audit(run, capfd)
    told += caplog.text
    assert str(dag_run.state) == "failed"
    assert task_states(dag_run) == {"audit_window": "failed"}
    assert f"order {victim.order_id}" in told
    assert "no row in orders_by_store_day" in told
    report = report_of(dag_run)
    orders = report["topics"][run.topics.orders("ap-southeast")]
    assert orders["missing"] == 1
    assert report["missing"] == 1
    assert victim.order_id in orders["missing_examples"][0]
    # The gauge reaches Prometheus through the statsd_exporter mapping.
    label = f"{run.prefix}_ap-southeast_orders"
    query = f'retail_audit_missing_rows{{topic="{label}"}}'
    # (the clean run set it to 0 before)
    prom.wait_for(run.topology, query, lambda r: prom.value(r) == 1.0, timeout=45)
