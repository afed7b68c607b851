"""The Compose deployment's Kafka secrets: every file compose.yaml mounts, consistent with the
broker's config there."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from cryptography import x509

from retail.credentials import Credentials
from stack import compose_secrets

COMPOSE = Path(__file__).resolve().parents[2] / "docker" / "compose.yaml"


def test_every_secret_compose_mounts_is_generated_and_matches_the_brokers_config(
    tmp_path: Path,
) -> None:
    out = tmp_path / "kafka"
    assert compose_secrets.generate(out)
    assert not compose_secrets.generate(out)  # made once: the broker's metadata has them
    compose = yaml.safe_load(COMPOSE.read_text())
    for spec in compose["secrets"].values():
        name = Path(spec["file"]).name
        assert (out / name).exists(), name
    env = compose["services"]["kafka-1"]["environment"]
    broker = x509.load_pem_x509_certificate((out / "kafka-1.pem").read_bytes())
    subject = broker.subject.rfc4514_string()
    assert f"User:{subject}" in env["KAFKA_SUPER_USERS"].split(";")
    sans = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"kafka-1", "kafka"} <= set(sans.get_values_for_type(x509.DNSName))
    args = (out / "scram-args").read_text().splitlines()
    assert args[0::2] == ["--add-scram"] * len(compose_secrets.logins())
    admin = (out / "admin-password").read_text()
    assert f"SCRAM-SHA-512=[name=admin,password={admin}]" in args
    login = Credentials(out, json.loads((out / "consumer-us-east.json").read_text())).login(
        "kafka", "consumer-us-east"
    )
    assert (
        f"SCRAM-SHA-512=[name=consumer-us-east,password={login.password.get_secret_value()}]"
        in args
    )
    assert (out.stat().st_mode & 0o777) == 0o700
