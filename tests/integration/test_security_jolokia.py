"""Each Cassandra node's Jolokia agent, seen from outside: no login, no answer (401); with the
login, what the policy does not name is refused, above all the diagnostic commands that load
code into the JVM and the StorageService operations that destroy data; what the stack uses
works."""

from __future__ import annotations

import re
import subprocess

import httpx
import pytest

from retail.jolokia import RING_ATTRIBUTES, STORAGE_SERVICE, Jolokia, JolokiaError, ring_view
from retail.topology import CassandraNode, Topology
from stack.local import LocalStack

DIAGNOSTIC_COMMAND = "com.sun.management:type=DiagnosticCommand"


def _url(node: CassandraNode) -> str:
    return f"http://{node.address}:{node.jolokia_port}/jolokia/"


def _read_ring(node: CassandraNode, **kwargs: object) -> httpx.Response:
    body = {"type": "read", "mbean": STORAGE_SERVICE, "attribute": list(RING_ATTRIBUTES)}
    return httpx.post(_url(node), json=body, timeout=10, **kwargs)  # type: ignore[arg-type]


def test_every_agent_refuses_a_request_without_the_login(
    topology: Topology, local_stack: LocalStack
) -> None:
    wrong = ("monitor", "not-the-password")
    for node in topology.nodes:
        assert _read_ring(node).status_code == 401, node.name
        assert _read_ring(node, auth=wrong).status_code == 401, node.name
    with pytest.raises(JolokiaError, match="refused the login"):
        ring_view(topology.nodes[0])


@pytest.mark.parametrize(
    ("mbean", "operation", "arguments"),
    [
        # Loads a native or Java agent into the JVM: arbitrary code.
        (DIAGNOSTIC_COMMAND, "jvmtiAgentLoad", ["/tmp/agent.so"]),
        (DIAGNOSTIC_COMMAND, "vmVersion", []),
        (STORAGE_SERVICE, "truncate", ["retail_ops", "schema_migrations"]),
        (
            STORAGE_SERVICE,
            "truncate(java.lang.String,java.lang.String)",
            ["retail_ops", "schema_migrations"],
        ),
        (STORAGE_SERVICE, "decommission", [False]),
    ],
)
def test_with_the_login_the_policy_refuses_what_the_platform_does_not_use(
    topology: Topology, local_stack: LocalStack, mbean: str, operation: str, arguments: list
) -> None:
    login = local_stack.jolokia_login()
    auth = (login.username, login.password.get_secret_value())
    node = topology.nodes[0]
    body = {"type": "exec", "mbean": mbean, "operation": operation, "arguments": arguments}
    resp = httpx.post(_url(node), json=body, auth=auth, timeout=10)
    # The agent answers a policy refusal with HTTP 200 and a JSON status 403.
    assert resp.status_code == 200
    assert resp.json()["status"] == 403, resp.json()
    assert "forbidden" in resp.json()["error"]
    with Jolokia(login=login) as client, pytest.raises(JolokiaError, match="access policy"):
        client.exec(node, mbean, operation, *arguments)


def test_with_the_login_the_policy_refuses_reads_listing_and_get(
    topology: Topology, local_stack: LocalStack
) -> None:
    login = local_stack.jolokia_login()
    auth = (login.username, login.password.get_secret_value())
    node = topology.nodes[0]
    refused = [
        # The JVM's options, and an attribute of StorageService the platform does not read.
        {"type": "read", "mbean": "java.lang:type=Runtime", "attribute": "InputArguments"},
        {"type": "read", "mbean": STORAGE_SERVICE, "attribute": "ClusterName"},
        {"type": "list"},
        {"type": "search", "mbean": "*:*"},
        {"type": "write", "mbean": STORAGE_SERVICE, "attribute": "LoggingLevel", "value": "x"},
    ]
    for body in refused:
        assert httpx.post(_url(node), json=body, auth=auth, timeout=10).json()["status"] == 403
    # GET requests (the URL form, what a browser or a link sends) are refused whatever they ask.
    get = httpx.get(f"{_url(node)}read/{STORAGE_SERVICE}/LiveNodesWithPort", auth=auth)
    assert get.json()["status"] == 403


def test_with_the_login_the_reads_and_operations_the_platform_uses_work(
    topology: Topology, local_stack: LocalStack
) -> None:
    login = local_stack.jolokia_login()
    view = ring_view(topology.nodes[0], login)
    assert view.up == {n.address for n in topology.nodes}
    with Jolokia(login=login) as client:
        for node in topology.nodes:
            ranges = client.exec(
                node, STORAGE_SERVICE, "getRangeToEndpointWithPortMap", "system_auth"
            )
            assert ranges
            sessions = client.exec(
                node, "org.apache.cassandra.db:type=RepairService", "parentRepairSessionsCount"
            )
            assert sessions is not None


def test_the_password_is_not_on_any_command_line(
    topology: Topology, local_stack: LocalStack
) -> None:
    password = local_stack.jolokia_login().password.get_secret_value()
    ps = subprocess.run(["ps", "-eww", "-o", "args="], capture_output=True, text=True, check=True)
    agents = [line for line in ps.stdout.splitlines() if "jolokia-agent-jvm" in line]
    assert len(agents) >= len(topology.nodes)
    assert password not in ps.stdout
    # The agent's options are a file (config=...), never host/port/user/password inline.
    for line in agents:
        agent = re.search(r"-javaagent:\S*jolokia-agent-jvm\S*", line)
        assert agent and re.fullmatch(r"\S+\.jar=config=\S+\.properties", agent.group()), line
        assert "password" not in agent.group()
