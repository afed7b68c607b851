"""Prometheus, Alertmanager and statsd_exporter of the local stack, with the project's config.

Prometheus's config is the committed ``monitoring/prometheus/prometheus.yml``; what differs
between deployments (the targets) lives in file_sd JSON files that the stack writes here from
the topology, so the local stack and the Compose file share one config.

All three listen on loopback addresses only (the topology's), and none has an API that changes
its state without a login: Prometheus runs without ``--web.enable-lifecycle``, Alertmanager
without its cluster listener. (Alertmanager's silences API takes no login; on loopback only the
local user reaches it. Compose puts basic auth in front of all three.)
"""

from __future__ import annotations

import ipaddress
import json
import shutil
from pathlib import Path

from retail.topology import Endpoint, Topology
from stack.errors import StackError
from stack.fetch import Artifacts
from stack.process import ManagedProcess

MONITORING = Path(__file__).resolve().parent.parent / "monitoring"


def loopback(endpoint: Endpoint, what: str) -> str:
    """``host:port`` of ``endpoint``, refused unless its host is a loopback address: the local
    stack's monitoring servers take no login, so nothing but this machine may reach them."""
    try:
        ok = ipaddress.ip_address(endpoint.host).is_loopback
    except ValueError:
        ok = endpoint.host == "localhost"
    if not ok:
        raise StackError(
            f"{what} would listen on {endpoint.host}, not a loopback address: the local stack's "
            "monitoring has no login; use 127.0.0.x in the topology (Compose has basic auth)"
        )
    return f"{endpoint.host}:{endpoint.port}"


def scrape_targets(topology: Topology) -> dict[str, list[dict[str, object]]]:
    """file_sd target groups per job, labelled so that every series says where it came from."""

    def one(host: str, port: int, **labels: str) -> dict[str, object]:
        return {"targets": [f"{host}:{port}"], "labels": labels}

    return {
        "prometheus": [one(topology.prometheus.host, topology.prometheus.port)],
        "alertmanager": [one(topology.alertmanager.host, topology.alertmanager.port)],
        "statsd_exporter": [one(topology.statsd_exporter.host, topology.statsd_exporter.port)],
        "cassandra": [
            one(n.address, n.exporter_port, dc=n.dc, rack=n.rack, node=n.name)
            for n in topology.nodes
        ],
        "kafka": [one(b.address, b.exporter_port, broker=b.name) for b in topology.brokers],
    }


def prometheus_process(stack_dir: Path, topology: Topology, artifacts: Artifacts) -> ManagedProcess:
    home = stack_dir / "prometheus"
    (home / "targets").mkdir(parents=True, exist_ok=True)
    shutil.copy(MONITORING / "prometheus" / "prometheus.yml", home / "prometheus.yml")
    shutil.rmtree(home / "rules", ignore_errors=True)
    shutil.copytree(MONITORING / "prometheus" / "rules", home / "rules")
    for job, groups in scrape_targets(topology).items():
        (home / "targets" / f"{job}.json").write_text(json.dumps(groups, indent=2))
    p = topology.prometheus
    argv = [
        str(artifacts.prometheus),
        f"--config.file={home / 'prometheus.yml'}",
        f"--storage.tsdb.path={home / 'data'}",
        f"--web.listen-address={loopback(p, 'Prometheus')}",
        "--storage.tsdb.retention.time=2d",
        # No --web.enable-lifecycle: its /-/reload and /-/quit take no login. The config is
        # reloaded with SIGHUP by whoever owns the process.
    ]
    return ManagedProcess(name="prometheus", argv=argv, home=home)


def alertmanager_process(
    stack_dir: Path, topology: Topology, artifacts: Artifacts
) -> ManagedProcess:
    home = stack_dir / "alertmanager"
    a = topology.alertmanager
    # An empty cluster address turns off Alertmanager's HA gossip (it would listen on
    # 0.0.0.0:9094 otherwise).
    argv = [
        str(artifacts.alertmanager),
        f"--config.file={MONITORING / 'alertmanager' / 'alertmanager.yml'}",
        f"--storage.path={home / 'data'}",
        f"--web.listen-address={loopback(a, 'Alertmanager')}",
        "--cluster.listen-address=",
    ]
    return ManagedProcess(name="alertmanager", argv=argv, home=home)


def statsd_exporter_process(
    stack_dir: Path, topology: Topology, artifacts: Artifacts
) -> ManagedProcess:
    home = stack_dir / "statsd_exporter"
    s, w = topology.statsd, topology.statsd_exporter
    argv = [
        str(artifacts.statsd_exporter),
        f"--web.listen-address={loopback(w, 'statsd_exporter')}",
        f"--statsd.listen-udp={loopback(s, 'StatsD')}",
        f"--statsd.listen-tcp={loopback(s, 'StatsD')}",
        f"--statsd.mapping-config={MONITORING / 'statsd' / 'mapping.yml'}",
    ]
    return ManagedProcess(name="statsd_exporter", argv=argv, home=home)
