"""The Jolokia agents' access policy and options: what the rendered policy allows and refuses
(evaluated as Jolokia's MBeanAccessChecker does), and no password on the java command line."""

from __future__ import annotations

import re
import stat
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from pydantic import SecretStr

from retail import jolokia
from retail.credentials import Login
from retail.ops.repair import STORAGE_PROXY
from retail.ops.repair_lease import REPAIR_SERVICE
from retail.ops.ring import CLEANUP_OPERATION
from retail.topology import profile_topology
from stack import cassandra
from stack import jolokia as stack_jolokia
from stack.fetch import Artifacts

DOCKER_POLICY = Path(__file__).resolve().parents[2] / "docker" / "jvm" / "jolokia-access.xml"


def _matches(pattern: str, name: str) -> bool:
    """ObjectName pattern matching as far as the policy uses it: the same domain and keys, a
    value ``*`` matching any value."""
    p_domain, p_keys = pattern.split(":", 1)
    domain, keys = name.split(":", 1)
    want = dict(kv.split("=", 1) for kv in p_keys.split(","))
    have = dict(kv.split("=", 1) for kv in keys.split(","))
    return (
        p_domain == domain
        and want.keys() == have.keys()
        and all(v in ("*", have[k]) for k, v in want.items())
    )


def _section(root: ET.Element, tag: str) -> dict[str, dict[str, set[str]]]:
    """mbean pattern -> {"read": attributes, "write": attributes, "exec": operations}."""
    out: dict[str, dict[str, set[str]]] = {}
    for section in root.iter(tag):
        for mbean in section.iter("mbean"):
            name = (mbean.findtext("name") or "").strip()
            entry = out.setdefault(name, {"read": set(), "write": set(), "exec": set()})
            for attr in mbean.iter("attribute"):
                entry["read"].add((attr.text or "").strip())
                if attr.get("mode") != "read":
                    entry["write"].add((attr.text or "").strip())
            entry["exec"] |= {(op.text or "").strip() for op in mbean.iter("operation")}
    return out


def _lookup(rules: dict[str, dict[str, set[str]]], kind: str, mbean: str, value: str) -> bool:
    for pattern, entry in rules.items():
        if _matches(pattern, mbean) and (value in entry[kind] or "*" in entry[kind]):
            return True
    return False


def allowed(policy: str, kind: str, mbean: str, value: str) -> bool:
    """Whether Jolokia lets a ``kind`` (read/write/exec) request on ``mbean`` through: a type
    listed in <commands> passes unless <deny> names it; any other only if <allow> names it."""
    root = ET.fromstring(policy)
    commands = root.find("commands")
    type_allowed = commands is None or kind in {(c.text or "").strip() for c in commands}
    if type_allowed:
        return not _lookup(_section(root, "deny"), kind, mbean, value)
    return _lookup(_section(root, "allow"), kind, mbean, value)


POLICY = stack_jolokia.render_policy()
SS = jolokia.STORAGE_SERVICE


@pytest.mark.parametrize(
    ("kind", "mbean", "value"),
    [
        *(("read", SS, a) for a in jolokia.RING_ATTRIBUTES),
        ("read", SS, "AllDataFileLocations"),
        (
            "read",
            "org.apache.cassandra.metrics:type=Table,keyspace=retail,scope=orders_by_id,"
            "name=MaxPartitionSize",
            "Value",
        ),
        ("exec", SS, "getRangeToEndpointWithPortMap"),
        ("exec", SS, "repairAsync"),
        ("exec", SS, "getParentRepairStatus"),
        ("exec", SS, "forceTerminateAllRepairSessions"),
        ("exec", SS, CLEANUP_OPERATION),
        ("exec", REPAIR_SERVICE, "parentRepairSessionsCount"),
        ("write", STORAGE_PROXY, "HintedHandoffEnabled"),
    ],
)
def test_the_policy_allows_what_the_stack_and_the_dags_use(
    kind: str, mbean: str, value: str
) -> None:
    assert allowed(POLICY, kind, mbean, value)


@pytest.mark.parametrize(
    ("kind", "mbean", "value"),
    [
        ("exec", "com.sun.management:type=DiagnosticCommand", "jvmtiAgentLoad"),
        ("exec", "com.sun.management:type=DiagnosticCommand", "vmVersion"),
        ("exec", SS, "truncate"),
        ("exec", SS, "truncate(java.lang.String,java.lang.String)"),
        ("exec", SS, "decommission"),
        ("exec", SS, "removeNode"),
        ("exec", SS, "stopDaemon"),
        # Cleanup only as the ring maintenance DAG sends it: with its signature, with jobs.
        ("exec", SS, "forceKeyspaceCleanup"),
        ("exec", SS, "forceKeyspaceCleanup(java.lang.String,[Ljava.lang.String;)"),
        ("exec", SS, "forceKeyspaceFlush(java.lang.String,[Ljava.lang.String;)"),
        ("exec", "jdk.management.jfr:type=FlightRecorder", "startRecording"),
        ("exec", "java.lang:type=Memory", "gc"),
        ("read", SS, "ClusterName"),
        ("read", "java.lang:type=Runtime", "InputArguments"),  # would show the JVM's options
        ("write", SS, "LoggingLevel"),
        ("write", STORAGE_PROXY, "RpcTimeout"),
        ("write", SS, "AllDataFileLocations"),  # allowed to read, not to write
    ],
)
def test_the_policy_refuses_everything_else(kind: str, mbean: str, value: str) -> None:
    assert not allowed(POLICY, kind, mbean, value)


def test_no_request_type_is_allowed_in_general_and_only_post_is_accepted() -> None:
    root = ET.fromstring(POLICY)
    commands = root.find("commands")
    assert commands is not None and list(commands) == []  # no list, search, read-anything
    assert [m.text for m in root.iter("method")] == ["post"]
    # What is denied outright, should a request type be opened one day.
    deny = _section(root, "deny")
    assert "*" in deny["com.sun.management:type=DiagnosticCommand"]["exec"]
    assert {"truncate", "decommission"} <= deny[SS]["exec"]


def test_the_local_policy_admits_loopback_clients_only() -> None:
    root = ET.fromstring(stack_jolokia.render_policy(remote_hosts=("127.0.0.0/8",)))
    assert [h.text for h in root.iter("host")] == ["127.0.0.0/8"]


def test_the_compose_policy_is_the_rendered_one() -> None:
    assert DOCKER_POLICY.read_text() == stack_jolokia.render_policy(), (
        "regenerate it: python -c 'from stack.jolokia import render_policy; "
        'print(render_policy(), end="")\' > docker/jvm/jolokia-access.xml'
    )


def test_the_agent_takes_its_login_from_a_private_file_not_the_command_line(
    tmp_path: Path,
) -> None:
    topo = profile_topology("test")
    node = topo.nodes[0]
    conf = tmp_path / "conf"
    conf.mkdir()
    login = Login("monitor", SecretStr("s3cret-pass_word"))
    config = stack_jolokia.write_agent_config(conf, node, login)
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    props = dict(line.split("=", 1) for line in config.read_text().splitlines() if "=" in line)
    assert props["host"] == node.address and props["port"] == str(node.jolokia_port)
    assert props["user"] == "monitor" and props["password"] == "s3cret-pass_word"
    assert props["authMode"] == "basic"
    assert props["policyLocation"] == (conf / stack_jolokia.POLICY_FILE).as_uri()
    assert (conf / stack_jolokia.POLICY_FILE).exists()

    artifacts = Artifacts(tmp_path / "cache")
    # The jars are looked up by name only: stand them in.
    agents = artifacts.agents
    agents.mkdir(parents=True)
    artifacts.cassandra_lib.mkdir(parents=True)
    for jar in ("jolokia-agent-jvm-2.5.1-javaagent.jar", "jmx_prometheus_javaagent-1.0.1.jar"):
        (agents / jar).touch()
    (artifacts.cassandra_lib / "jamm-0.4.0.jar").touch()
    argv = cassandra.node_process(tmp_path, topo, node, artifacts).argv
    agent = [a for a in argv if "jolokia-agent-jvm" in a]
    assert agent == [
        f"-javaagent:{agents / 'jolokia-agent-jvm-2.5.1-javaagent.jar'}="
        f"config={cassandra.node_home(tmp_path, node) / 'conf' / stack_jolokia.AGENT_CONFIG_FILE}"
    ]
    assert not any("s3cret" in a or "password" in a for a in argv)


def test_a_password_with_property_syntax_is_escaped() -> None:
    text = stack_jolokia.agent_properties(
        "127.0.1.1", 8778, Login("monitor", SecretStr("a=b:c d\\e")), Path("/x/p.xml")
    )
    assert "password=a\\=b\\:c\\ d\\\\e" in text.splitlines()


CONSTANTS = {
    "STORAGE_SERVICE": jolokia.STORAGE_SERVICE,
    "REPAIR_SERVICE": REPAIR_SERVICE,
    "STORAGE_PROXY": STORAGE_PROXY,
}


def test_every_jolokia_call_in_the_code_is_allowed_by_the_policy() -> None:
    """A new exec or write in retail/ or plugins/ fails here, not on a live node as a 403."""
    root = Path(__file__).resolve().parents[2]
    call = re.compile(r"jolokia\.(exec|write)\(\s*\w+,\s*([A-Z_]+),\s*\"(\w+)\"")
    found = [
        (kind, CONSTANTS[mbean], name)
        for path in [*root.glob("retail/**/*.py"), *root.glob("plugins/**/*.py")]
        for kind, mbean, name in call.findall(path.read_text())
    ]
    assert len(found) >= 7, found
    for kind, mbean, name in found:
        assert allowed(POLICY, kind, mbean, name), (kind, mbean, name)
