"""The platform's Kafka ACLs: each login gets the least its clients need, and nothing crosses
regions."""

from __future__ import annotations

from retail.kafka import AUDIT_GROUP, BALANCE_GROUP, Topics
from retail.kafka_acls import Grant, bindings, grants

TOPICS = Topics.named("retail")


def allowed(user: str) -> set[tuple[str, str, str]]:
    return {(g.kind, g.name, g.operation) for g in grants(TOPICS) if g.user == user}


def test_the_producer_writes_the_event_topics_and_nothing_else() -> None:
    assert allowed("producer") == {
        ("topic", t, op) for t in TOPICS.events for op in ("WRITE", "DESCRIBE")
    }
    assert "retail.unrouted" in TOPICS.events  # a line whose region it cannot tell goes there


def test_a_regional_consumer_reads_its_region_commits_its_group_and_dead_letters() -> None:
    assert allowed("consumer-us-east") == {
        ("topic", "retail.us-east.orders", "READ"),
        ("topic", "retail.us-east.orders", "DESCRIBE"),
        ("topic", "retail.us-east.inventory", "READ"),
        ("topic", "retail.us-east.inventory", "DESCRIBE"),
        ("group", "retail-us-east", "READ"),
        ("topic", "retail.deadletter", "WRITE"),
        ("topic", "retail.deadletter", "DESCRIBE"),
    }
    # The catch-all region also reads what no region could be told for.
    assert ("topic", "retail.unrouted", "READ") in allowed(f"consumer-{TOPICS.catch_all}")


def test_no_consumer_reads_another_region_or_its_group_and_none_reads_dead_letters() -> None:
    for region in TOPICS.regions:
        mine = allowed(f"consumer-{region}")
        for other in TOPICS.regions:
            if other == region:
                continue
            assert not {(k, n) for k, n, _ in mine} & {
                *(("topic", t) for t in TOPICS.of_region(other)),
                ("group", TOPICS.group(other)),
            }
        assert ("topic", TOPICS.deadletter, "READ") not in mine


def test_ops_reads_every_topic_and_the_groups_offsets_but_cannot_move_them() -> None:
    ops = allowed("ops")
    assert {("topic", t, "READ") for t in TOPICS.all} <= ops
    for region in TOPICS.regions:
        assert ("group", TOPICS.group(region), "DESCRIBE") in ops  # OffsetFetch
        assert ("group", TOPICS.group(region), "READ") not in ops  # OffsetCommit, JoinGroup
    assert {("group", AUDIT_GROUP, "DESCRIBE"), ("group", BALANCE_GROUP, "DESCRIBE")} <= ops
    assert not {op for _, _, op in ops} - {"READ", "DESCRIBE"}


def test_nothing_is_granted_to_the_admin_everyone_or_a_prefix() -> None:
    every = grants(TOPICS)
    assert {g.user for g in every} == {"producer", "ops"} | {
        f"consumer-{r}" for r in TOPICS.regions
    }
    assert {g.kind for g in every} == {"topic", "group"}  # no cluster-wide grant
    assert every == sorted(set(every))  # one set, in a stable order


def test_the_acls_follow_the_topics_prefix() -> None:
    run = Topics.named("it1234", partitions=6)
    names = {g.name for g in grants(run)}
    assert names == {*run.all, *(run.group(r) for r in run.regions), AUDIT_GROUP, BALANCE_GROUP}


def test_bindings_are_literal_allows_for_any_host() -> None:
    from confluent_kafka.admin import AclPermissionType, ResourcePatternType, ResourceType

    out = bindings(TOPICS)
    assert len(out) == len(grants(TOPICS))
    first = out[0]
    g: Grant = grants(TOPICS)[0]
    assert first.principal == g.principal == f"User:{g.user}"
    assert first.host == "*"
    assert first.resource_pattern_type == ResourcePatternType.LITERAL
    assert first.permission_type == AclPermissionType.ALLOW
    assert {b.restype for b in out} == {ResourceType.TOPIC, ResourceType.GROUP}
