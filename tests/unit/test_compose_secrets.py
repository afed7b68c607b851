"""The Compose deployment's Kafka secrets: every file compose.yaml mounts, made by `make
compose-secrets` from the same logins and CA as the rest, consistent with the broker's config."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import yaml
from cryptography import x509

from retail.credentials import Credentials
from retail.topology import Topology
from stack import secrets
from stack.secrets import COMPOSE_DIR

COMPOSE = COMPOSE_DIR / "compose.yaml"


def test_every_secret_compose_mounts_is_generated_and_matches_the_brokers_config(
    tmp_path: Path,
) -> None:
    topology = Topology.from_json((COMPOSE_DIR / "consumer" / "topology.json").read_text())
    creds = secrets.compose(tmp_path, topology)
    compose = yaml.safe_load(COMPOSE.read_text())
    out = tmp_path / "kafka"
    for spec in compose["secrets"].values():
        name = Path(spec["file"]).name
        assert (out / name).exists(), name
        # Readable by the container's own user; the 0700 directories keep the host's others out.
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name
    assert stat.S_IMODE(out.stat().st_mode) == stat.S_IMODE(tmp_path.stat().st_mode) == 0o700
    env = compose["services"]["kafka-1"]["environment"]
    broker = x509.load_pem_x509_certificate((out / "kafka-1.pem").read_bytes())
    broker.verify_directly_issued_by(x509.load_pem_x509_certificate(creds.ca_file.read_bytes()))
    assert f"User:{broker.subject.rfc4514_string()}" in env["KAFKA_SUPER_USERS"].split(";")
    sans = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"kafka-1", "kafka"} <= set(sans.get_values_for_type(x509.DNSName))
    args = (out / "scram-args").read_text().splitlines()
    logins = secrets.wanted_logins(topology)["kafka"]
    assert args[0::2] == ["--add-scram"] * len(logins)
    admin = (out / "admin-password").read_text()
    assert f"SCRAM-SHA-512=[name=admin,password={admin}]" in args
    mounted = Credentials(out, json.loads((out / "consumer-us-east.json").read_text()))
    login = mounted.login("kafka", "consumer-us-east")
    assert login.password == creds.login("kafka", "consumer-us-east").password
    assert (
        f"SCRAM-SHA-512=[name=consumer-us-east,password={login.password.get_secret_value()}]"
        in args
    )
    # A rerun keeps the broker's key (its formatted metadata trusts nothing else).
    before = (out / "kafka-1.pem").read_bytes()
    secrets.compose(tmp_path, topology)
    assert (out / "kafka-1.pem").read_bytes() == before
