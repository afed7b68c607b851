"""Fetch the servers once, into a cache outside the repository, and reuse them.

* Cassandra and Kafka: their jars and dependencies from Maven Central, each into a lib dir of
  its own (one Maven resolution per server: they disagree on netty, jackson and the logging
  backend), keyed by a hash of the pom so that a version bump fetches again.
* Java agents (JMX exporter, Jolokia): the jars alone, never their transitive dependencies.
* Prometheus and Alertmanager: Debian's packages, downloaded and unpacked into the cache (no
  root needed, no system service installed or started).
* statsd_exporter: ``go install`` of the upstream Go module into the cache.

Every step writes a ``.complete`` marker last, so an interrupted fetch is redone, not trusted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from stack.errors import FetchError

log = logging.getLogger(__name__)

JVM_DIR = Path(__file__).parent / "jvm"
STATSD_EXPORTER_MODULE = "github.com/prometheus/statsd_exporter"
STATSD_EXPORTER_VERSION = "v0.30.0"
DEBIAN_PACKAGES = ("prometheus", "prometheus-alertmanager")


@dataclass(frozen=True)
class Artifacts:
    """Where the fetched pieces are, once :func:`fetch_all` has run."""

    root: Path

    def _keyed(self, name: str) -> Path:
        digest = hashlib.sha256((JVM_DIR / name / "pom.xml").read_bytes()).hexdigest()[:12]
        return self.root / "jvm" / f"{name}-{digest}"

    @property
    def cassandra_lib(self) -> Path:
        return self._keyed("cassandra") / "lib"

    @property
    def kafka_lib(self) -> Path:
        return self._keyed("kafka") / "lib"

    @property
    def agents(self) -> Path:
        return self._keyed("agents") / "lib"

    @property
    def jmx_exporter_jar(self) -> Path:
        return _one(self.agents, "jmx_prometheus_javaagent-*.jar")

    @property
    def jolokia_jar(self) -> Path:
        return _one(self.agents, "jolokia-agent-jvm-*-javaagent.jar")

    @property
    def jamm_jar(self) -> Path:
        return _one(self.cassandra_lib, "jamm-*.jar")

    @property
    def debian_root(self) -> Path:
        return self.root / "debian"

    @property
    def prometheus(self) -> Path:
        return self.debian_root / "usr/bin/prometheus"

    @property
    def promtool(self) -> Path:
        return self.debian_root / "usr/bin/promtool"

    @property
    def alertmanager(self) -> Path:
        return self.debian_root / "usr/bin/prometheus-alertmanager"

    @property
    def statsd_exporter(self) -> Path:
        return self.root / "go" / STATSD_EXPORTER_VERSION / "statsd_exporter"

    def missing(self) -> list[str]:
        """Names of the pieces not fetched yet."""
        checks = {
            "cassandra": self.cassandra_lib.parent / ".complete",
            "kafka": self.kafka_lib.parent / ".complete",
            "agents": self.agents.parent / ".complete",
            "prometheus+alertmanager": self.debian_root / ".complete",
            "alertmanager templates": DEBIAN_TEMPLATE_DIR / "default.tmpl",
            "statsd_exporter": self.statsd_exporter,
        }
        return [name for name, marker in checks.items() if not marker.exists()]


def _one(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    if not found:
        raise FetchError(f"nothing matches {pattern} in {directory}; run `retail stack fetch`")
    return found[-1]


def _run(
    step: str,
    argv: list[str],
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    hint: str = "",
) -> None:
    log.debug("%s: %s", step, " ".join(argv))
    try:
        done = subprocess.run(
            argv,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError as exc:
        raise FetchError(f"{step}: {argv[0]} is not installed. {hint}".strip()) from exc
    if done.returncode != 0:
        out = "\n".join((done.stdout + done.stderr).strip().splitlines()[-25:])
        raise FetchError(f"{step} failed (exit {done.returncode}):\n{out}\n{hint}".rstrip())


def _maven(name: str, target: Path, transitive: bool) -> None:
    marker = target.parent / ".complete"
    if marker.exists():
        return
    shutil.rmtree(target.parent, ignore_errors=True)
    target.mkdir(parents=True)
    argv = [
        "mvn",
        "-q",
        "-B",
        "-f",
        str(JVM_DIR / name / "pom.xml"),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={target}",
    ]
    argv += ["-DincludeScope=runtime"] if transitive else ["-DexcludeTransitive=true"]
    _run(
        f"fetching {name} from Maven Central",
        argv,
        hint="Maven (mvn) and a JDK 17 are needed: apt-get install maven openjdk-17-jdk-headless",
    )
    marker.touch()


def _debian(root: Path) -> None:
    marker = root / ".complete"
    if not marker.exists():
        _download_debian(root)
    _install_alertmanager_templates(root)


def _download_debian(root: Path) -> None:
    marker = root / ".complete"
    shutil.rmtree(root, ignore_errors=True)
    debs = root.parent / "debian-debs"
    shutil.rmtree(debs, ignore_errors=True)
    debs.mkdir(parents=True)
    hint = "apt-get download needs current package lists: run `apt-get update` (as root) once."
    try:
        _run(
            "downloading Debian packages",
            ["apt-get", "download", *DEBIAN_PACKAGES],
            cwd=debs,
            hint=hint,
        )
    except FetchError:
        if os.geteuid() != 0:
            raise
        # Fresh machines often have no package lists yet; as root we can fix that ourselves.
        _run("refreshing Debian package lists", ["apt-get", "update", "-q"])
        _run(
            "downloading Debian packages",
            ["apt-get", "download", *DEBIAN_PACKAGES],
            cwd=debs,
            hint=hint,
        )
    root.mkdir(parents=True)
    for deb in sorted(debs.glob("*.deb")):
        _run(f"unpacking {deb.name}", ["dpkg-deb", "-x", str(deb), str(root)])
    shutil.rmtree(debs)
    marker.touch()


# Debian patches Alertmanager to read its default notification templates from this fixed path
# instead of the copy compiled into upstream builds; without them it refuses its config.
DEBIAN_TEMPLATE_DIR = Path("/usr/share/prometheus/alertmanager")


def _install_alertmanager_templates(root: Path) -> None:
    """Put the package's own template files where its patched binary looks for them.

    We do not ``apt-get install`` the package: its init script would start a second
    Alertmanager on the port ours uses.
    """
    unpacked = root / DEBIAN_TEMPLATE_DIR.relative_to("/")
    wanted = sorted(unpacked.glob("*.tmpl"))
    if all((DEBIAN_TEMPLATE_DIR / t.name).exists() for t in wanted):
        return
    argv = ["install", "-D", "-m", "0644", "-t", str(DEBIAN_TEMPLATE_DIR), *map(str, wanted)]
    if os.geteuid() != 0:
        argv = ["sudo", "-n", *argv]
    _run(
        "installing Alertmanager's templates",
        argv,
        hint=f"Debian's Alertmanager reads them from {DEBIAN_TEMPLATE_DIR}; copy "
        f"{unpacked}/*.tmpl there as root once.",
    )


def _statsd_exporter(binary: Path) -> None:
    if binary.exists():
        return
    binary.parent.mkdir(parents=True, exist_ok=True)
    # GOTOOLCHAIN=local: build with the installed Go instead of trying to download another one.
    _run(
        "building statsd_exporter with go install",
        ["go", "install", f"{STATSD_EXPORTER_MODULE}@{STATSD_EXPORTER_VERSION}"],
        env={"GOBIN": str(binary.parent), "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"},
        hint="Go 1.25 or newer is needed (https://go.dev/doc/install or apt-get install golang).",
    )


def fetch_all(cache_dir: Path, on_step: Callable[[str], None] | None = None) -> Artifacts:
    """Fetch everything that is missing from the cache; returns where it all is."""
    artifacts = Artifacts(cache_dir)
    steps: list[tuple[str, Callable[[], None]]] = [
        ("cassandra", lambda: _maven("cassandra", artifacts.cassandra_lib, transitive=True)),
        ("kafka", lambda: _maven("kafka", artifacts.kafka_lib, transitive=True)),
        ("agents", lambda: _maven("agents", artifacts.agents, transitive=False)),
        ("prometheus+alertmanager", lambda: _debian(artifacts.debian_root)),
        ("alertmanager templates", lambda: _debian(artifacts.debian_root)),
        ("statsd_exporter", lambda: _statsd_exporter(artifacts.statsd_exporter)),
    ]
    missing = set(artifacts.missing())
    for name, step in steps:
        if name in missing:
            if on_step:
                on_step(name)
            log.info("fetching %s into %s", name, cache_dir)
            step()
    return artifacts
