"""``python -m stack.compose_secrets [DIR]``: the Kafka secrets of the Compose deployment, made
once into ``docker/secrets/kafka/`` (git-ignored), where ``docker/compose.yaml`` mounts them
from as Docker secrets. An existing directory is left alone: its passwords are in the formatted
broker's metadata.

The directory is 0700 (only its owner on the host reads the secrets); the files Compose mounts
are 0644 because it bind-mounts them into containers that run as other users (the Kafka image's
and the consumers'), which must read them; ``logins.json`` (every login, for the clients
Compose does not configure: the producer, and ``ops`` for Airflow's ``retail_kafka``) is 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import secrets
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from retail import credentials as cred
from retail.topology import REGIONS

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "docker" / "secrets" / "kafka"
ORGANIZATION = "retail-platform"
BROKER = "kafka-1"
# The names clients dial: the service, its network alias, and the port published on the host.
BROKER_NAMES = (BROKER, "kafka")
BROKER_ADDRESSES = ("127.0.0.1",)


def logins() -> list[str]:
    """Every Kafka login of the Compose deployment (its regions are the platform's)."""
    return [
        cred.KAFKA_ADMIN,
        cred.KAFKA_PRODUCER,
        cred.KAFKA_OPS,
        *(cred.kafka_consumer(r.dc) for r in REGIONS),
    ]


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _certificate(
    subject: x509.Name, issuer: x509.Name, public_key: object, signer: ec.EllipticCurvePrivateKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=730))
    )


def generate(directory: Path) -> bool:
    """Write every file ``docker/compose.yaml`` mounts; False if ``directory`` exists already."""
    if directory.exists():
        return False
    directory.mkdir(mode=0o700, parents=True)
    passwords = {user: secrets.token_urlsafe(18) for user in logins()}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"retail-platform compose CA {secrets.token_hex(4)}")
    ca = (
        _certificate(ca_name, ca_name, ca_key.public_key(), ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in BROKER_NAMES]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in BROKER_ADDRESSES]
    broker = (
        _certificate(_name(BROKER), ca_name, key.public_key(), ca_key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    files = {
        "ca.pem": ca.public_bytes(pem),
        f"{BROKER}.pem": key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        + broker.public_bytes(pem),
        "admin-password": passwords[cred.KAFKA_ADMIN].encode(),
        "scram-args": "".join(
            f"--add-scram\nSCRAM-SHA-512=[name={u},password={p}]\n" for u, p in passwords.items()
        ).encode(),
    }
    for region in REGIONS:
        user = cred.kafka_consumer(region.dc)
        files[f"{user}.json"] = json.dumps({"kafka": {user: passwords[user]}}).encode()
    # The logins Compose does not mount (the producer's, ops' for Airflow's retail_kafka), kept
    # for whoever configures those clients.
    files["logins.json"] = json.dumps({"kafka": passwords}, indent=2).encode()
    for name, data in files.items():
        path = directory / name
        path.write_bytes(data)
        path.chmod(0o600 if name == "logins.json" else 0o644)
    return True


def main(argv: list[str]) -> int:
    directory = Path(argv[0]) if argv else DEFAULT_DIR
    if generate(directory):
        print(f"Kafka secrets for Compose written to {directory}")
    else:
        print(f"{directory} exists: left as it is (delete it and the kafka-1-data volume to redo)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
