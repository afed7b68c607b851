"""The JMX exporter rules (monitoring/jmx/) load in the real jmx_prometheus_javaagent.

The Cassandra and Kafka JVMs re-read these files while they run, and an agent that cannot load
its config does not serve at all: here both configs are loaded by the cached agent in one small
JVM of the test's own (free loopback ports), which must then serve /metrics without errors.
What the rules yield from the real servers' MBeans is listed in each file's header and checked
on the live stack by the integration tests (every dashboard query returns data).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from retail.settings import get_settings
from stack.fetch import Artifacts

JMX = Path(__file__).resolve().parents[2] / "monitoring" / "jmx"
SLEEP = "public class Sleep { public static void main(String[] a) throws Exception {"
SLEEP += " Thread.sleep(Long.parseLong(a[0])); } }\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_rules_keep_names_lowercase_and_beans_listed() -> None:
    for path in sorted(JMX.glob("*.yml")):
        config = yaml.safe_load(path.read_text())
        assert config["lowercaseOutputName"] is True, path.name
        # Only listed beans are read: a pattern of a whole domain would read thousands.
        assert all(":" in name and "type=" in name for name in config["includeObjectNames"])
        assert all(rule["name"] for rule in config["rules"]), path.name


def test_both_configs_load_in_the_real_agent(tmp_path: Path) -> None:
    java = shutil.which("java")
    art = Artifacts(get_settings().cache_dir)
    if java is None or not art.agents.exists():
        pytest.fail("java or the JMX exporter agent is missing: run `make setup`")
    (tmp_path / "Sleep.java").write_text(SLEEP)
    # One JVM per config (two agents in one JVM clash on their own metrics), started together.
    jvms = {}
    for name in ("cassandra", "kafka"):
        port = _free_port()
        agent = f"-javaagent:{art.jmx_exporter_jar}=127.0.0.1:{port}:{JMX / f'{name}.yml'}"
        log = tmp_path / f"{name}.log"
        proc = subprocess.Popen(
            [java, "-Xmx64m", agent, str(tmp_path / "Sleep.java"), "60000"],
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
        jvms[name] = (proc, port, log)
    try:
        for name, (proc, port, log) in jvms.items():
            deadline = time.monotonic() + 30
            while True:
                try:
                    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
                    break
                except httpx.HTTPError:
                    assert proc.poll() is None, f"{name}: {log.read_text()}"
                    assert time.monotonic() < deadline, f"{name}: {log.read_text()}"
                    time.sleep(0.2)
            lines = text.splitlines()
            assert "jmx_scrape_error 0.0" in lines, name
            assert "jmx_config_reload_failure_total 0.0" in lines, name
    finally:
        for proc, _, _ in jvms.values():
            proc.terminate()
            proc.wait(timeout=10)
