"""Alerts an on-call engineer can trust: a Cassandra node killed for real fires its alert in
Prometheus, Alertmanager delivers it to the webhook receiver, and a restart resolves it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from stack.local import LocalStack
from tests.integration import prom

# Where monitoring/alertmanager/alertmanager.yml delivers.
WEBHOOK = ("127.0.0.1", 9096)


class Receiver:
    """The webhook end of Alertmanager: every notification it POSTs, in arrival order."""

    def __init__(self) -> None:
        self.notifications: list[dict] = []
        self.lock = threading.Lock()

    def alerts(self) -> list[tuple[str, dict]]:
        """(notification status, alert) for every alert delivered so far."""
        with self.lock:
            return [(n["status"], a) for n in self.notifications for a in n["alerts"]]

    def wait_for(self, status: str, match: dict[str, str], timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for got, alert in self.alerts():
                labels = alert["labels"]
                if got == status and all(labels.get(k) == v for k, v in match.items()):
                    return alert
            time.sleep(1.0)
        raise AssertionError(
            f"no {status} alert {match} within {timeout:.0f}s; received: "
            f"{[(s, a['labels'].get('alertname'), a['status']) for s, a in self.alerts()]}"
        )


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with rec.lock:
                rec.notifications.append(json.loads(body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(WEBHOOK, Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()


def test_a_killed_node_fires_its_alert_to_the_webhook_and_a_restart_resolves_it(
    healthy: LocalStack, receiver: Receiver
) -> None:
    topology = healthy.topology()
    node = topology.datacenters[-1].nodes[0]
    dc_is_one_node = len(topology.datacenter(node.dc).nodes) == 1
    healthy.kill(node.name)
    try:
        # Prometheus sees the node itself down...
        down = prom.wait_for(
            topology,
            f'ALERTS{{alertname="CassandraNodeDown", node="{node.name}", alertstate="firing"}}',
            timeout=120,
        )
        assert down[0]["metric"]["dc"] == node.dc
        # ...and Alertmanager delivers what explains it best: with one node in the DC that is
        # the whole DC down, which inhibits the node's own alert.
        expected = (
            {"alertname": "CassandraDatacenterDown", "dc": node.dc}
            if dc_is_one_node
            else {"alertname": "CassandraNodeDown", "node": node.name}
        )
        fired = receiver.wait_for("firing", expected, timeout=120)
        assert fired["annotations"]["summary"] and fired["annotations"]["runbook"]
        assert fired["labels"]["severity"] == ("critical" if dc_is_one_node else "warning")
        if dc_is_one_node:
            delivered = {a["labels"]["alertname"] for _, a in receiver.alerts()}
            assert "CassandraNodeDown" not in delivered  # inhibited by the DC alert
    finally:
        healthy.start(node.name)

    receiver.wait_for("resolved", expected, timeout=180)
    assert not prom.firing(topology, "CassandraNodeDown")
