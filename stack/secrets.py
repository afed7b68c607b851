"""The local stack's secrets, generated on its first ``up``: every login, and a CA of its own
that signs each server's certificate.

Everything lands in ``<stack dir>/secrets/`` (mode 0700): ``credentials.json`` and every private
key are created with mode 0600 by the ``open`` call itself (``O_EXCL``), so no other user can
read them in the moment before a chmod. Clients read them through :mod:`retail.credentials`;
nothing here prints or logs a password.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from retail import credentials as cred
from retail.credentials import write_private as write_private  # defined there: retail/ needs it
from retail.topology import Topology

log = logging.getLogger(__name__)

CA_KEY_FILE = "ca.key"
CERT_DAYS = 730


def secrets_dir(stack_dir: Path) -> Path:
    return stack_dir / "secrets"


def wanted_logins(topology: Topology) -> dict[str, list[str]]:
    """Every login the platform of ``topology`` uses, by system."""
    return {
        "cassandra": list(cred.CASSANDRA_ROLES),
        "kafka": [
            cred.KAFKA_ADMIN,
            cred.KAFKA_PRODUCER,
            cred.KAFKA_OPS,
            *(cred.kafka_consumer(dc.name) for dc in topology.datacenters),
        ],
        "jolokia": [cred.JOLOKIA_USER],
        "airflow": list(cred.AIRFLOW_USERS),
    }


def ensure(stack_dir: Path, topology: Topology) -> cred.Credentials:
    """Generate what is missing (logins, the CA, server certificates) and keep what exists: a
    restarted stack keeps its passwords, and a DC added later gets its consumer's login."""
    return ensure_in(secrets_dir(stack_dir), topology)


def ensure_in(directory: Path, topology: Topology) -> cred.Credentials:
    """:func:`ensure` into ``directory`` itself (a deployment's secrets, e.g. Compose's)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / cred.CREDENTIALS_FILE
    logins: dict[str, dict[str, str]] = json.loads(path.read_text()) if path.exists() else {}
    added = 0
    for system, users in wanted_logins(topology).items():
        have = logins.setdefault(system, {})
        for user in users:
            if user not in have:
                # 24 URL-safe characters: 144 random bits, and nothing a config file or a
                # JAAS line would have to quote.
                have[user] = secrets.token_urlsafe(18)
                added += 1
    if added:
        write_private(path, json.dumps(logins, indent=2).encode())
        log.info("generated %d login(s) into %s", added, path)
    ca_key, ca_cert = _ensure_ca(directory)
    for name, address in _servers(topology):
        _ensure_server_cert(directory, name, address, ca_key, ca_cert)
    return cred.Credentials(directory, logins)


def server_pem(stack_dir: Path, name: str) -> Path:
    """A server's private key followed by its certificate (PEM), as Cassandra's and Kafka's PEM
    key stores read them."""
    return _server_pem_in(secrets_dir(stack_dir), name)


def _server_pem_in(directory: Path, name: str) -> Path:
    return directory / "servers" / f"{name}.pem"


def _servers(topology: Topology) -> list[tuple[str, str]]:
    return [(n.name, n.address) for n in topology.nodes] + [
        (b.name, b.address) for b in topology.brokers
    ]


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "retail-platform local stack"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(
        now + datetime.timedelta(days=CERT_DAYS)
    )


def _ensure_ca(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key_path, cert_path = directory / CA_KEY_FILE, directory / cred.CA_FILE
    if key_path.exists() and cert_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key, x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(f"retail-platform CA {secrets.token_hex(4)}")
    cert = (
        _validity(x509.CertificateBuilder())
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private(key_path, _pkcs8(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    log.info("generated the stack's CA into %s", cert_path)
    return key, cert


def _ensure_server_cert(
    directory: Path,
    name: str,
    address: str,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
) -> None:
    path = _server_pem_in(directory, name)
    if path.exists():
        return
    path.parent.mkdir(mode=0o700, exist_ok=True)
    write_private(path, _server_key_and_cert(name, _alt_names(name, address), ca_key, ca_cert))


def _server_key_and_cert(
    name: str,
    alt_names: list[x509.GeneralName],
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
) -> bytes:
    """A new key for server ``name`` and its certificate from the CA (PEM, key first)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _validity(x509.CertificateBuilder())
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            # The address clients dial is the name checked: every server listens on its own.
            x509.SubjectAlternativeName(alt_names),
            critical=False,
        )
        .add_extension(
            # Server and client: a Cassandra node or Kafka broker is also the client of its peers.
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return _pkcs8(key) + cert.public_bytes(serialization.Encoding.PEM)


def _alt_names(name: str, address: str) -> list[x509.GeneralName]:
    """The names a client may dial the server by: its address (an IP on the local stack, a
    service name in Compose) and its node name."""
    try:
        dialled: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(address))
    except ValueError:
        dialled = x509.DNSName(address)
    return [dialled] + ([x509.DNSName(name)] if name != address else [])


def _pkcs8(key: ec.EllipticCurvePrivateKey) -> bytes:
    # PKCS#8, unencrypted: the form both Cassandra's and Kafka's PEM key stores accept.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# --- a Compose deployment's secrets ----------------------------------------------------------

COMPOSE_DIR = Path(__file__).resolve().parent.parent / "docker"
COMPOSE_EXAMPLE = COMPOSE_DIR / "secrets.example.env"
COMPOSE_ENV = "secrets.env"


def compose_variables(creds: cred.Credentials) -> dict[str, str]:
    """The values of Compose's secret variables that are logins of ``creds``."""

    def password(system: str, user: str) -> str:
        return creds.login(system, user).password.get_secret_value()

    return {
        "CASSANDRA_CONSUMER_PASSWORD": password("cassandra", cred.CASSANDRA_CONSUMER),
        "CASSANDRA_OPS_PASSWORD": password("cassandra", cred.CASSANDRA_OPS),
        "KAFKA_OPS_PASSWORD": password("kafka", cred.KAFKA_OPS),
        "JOLOKIA_PASSWORD": password("jolokia", cred.JOLOKIA_USER),
        **{f"AIRFLOW_{u.upper()}_PASSWORD": password("airflow", u) for u in cred.AIRFLOW_USERS},
    }


def compose(directory: Path, topology: Topology) -> cred.Credentials:
    """The secrets of the Compose deployment of ``topology`` (addresses are service names) into
    ``directory``: what :func:`ensure_in` makes (the logins that ``cassandra-roles`` sets, the
    CA, a certificate per node and broker naming its service), and ``secrets.env``: a value
    for every variable of docker/secrets.example.env, the logins' where they are logins, the
    others generated; what exists is kept. Each file 0600."""
    creds = ensure_in(directory, topology)
    path = directory / COMPOSE_ENV
    existing = _read_env(path) if path.exists() else {}
    values = {**existing, **compose_variables(creds)}
    for name in _read_env(COMPOSE_EXAMPLE):
        values.setdefault(name, secrets.token_urlsafe(18))
    write_private(path, "".join(f"{k}={v}\n" for k, v in sorted(values.items())).encode())
    _compose_kafka_files(directory, creds, topology)
    return creds


COMPOSE_KAFKA_DIR = "kafka"
# The names the broker is dialled by in Compose: its service, its network alias, and the port
# published on the host.
COMPOSE_BROKER_NAMES = ("kafka",)
COMPOSE_BROKER_ADDRESSES = ("127.0.0.1",)


def _compose_kafka_files(directory: Path, creds: cred.Credentials, topology: Topology) -> None:
    """The files docker/compose.yaml mounts as Docker secrets into the Kafka broker and each
    consumer: containers that run as users of their own, so each file is created readable
    (0644) by its open call, inside a directory only its owner on the host can enter (0700)."""
    out = directory / COMPOSE_KAFKA_DIR
    out.mkdir(mode=0o700, exist_ok=True)
    logins = {
        user: creds.login("kafka", user).password.get_secret_value()
        for user in wanted_logins(topology)["kafka"]
    }
    broker = topology.brokers[0]
    files = {
        "ca.pem": creds.ca_file.read_bytes(),
        "admin-password": logins[cred.KAFKA_ADMIN].encode(),
        "scram-args": "".join(
            f"--add-scram\nSCRAM-SHA-512=[name={u},password={p}]\n" for u, p in logins.items()
        ).encode(),
        **{
            f"{cred.kafka_consumer(dc.name)}.json": json.dumps(
                {"kafka": {cred.kafka_consumer(dc.name): logins[cred.kafka_consumer(dc.name)]}}
            ).encode()
            for dc in topology.datacenters
        },
    }
    if not (out / f"{broker.name}.pem").exists():
        ca_key, ca_cert = _ensure_ca(directory)
        names: list[x509.GeneralName] = [
            x509.DNSName(n) for n in (broker.address, *COMPOSE_BROKER_NAMES)
        ] + [x509.IPAddress(ipaddress.ip_address(a)) for a in COMPOSE_BROKER_ADDRESSES]
        files[f"{broker.name}.pem"] = _server_key_and_cert(broker.name, names, ca_key, ca_cert)
    for name, data in files.items():
        write_private(out / name, data, mode=0o644)


def _read_env(path: Path) -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in path.read_text().splitlines()
        if line and not line.startswith("#") and "=" in line
    )
    return {k.strip(): v.strip() for k, v in pairs}


def tls_subject(name: str) -> str:
    """The subject of server ``name``'s certificate as Kafka and Cassandra name a TLS peer
    (RFC 4514, most specific first): ``CN=kafka-1,O=retail-platform local stack``."""
    return _name(name).rfc4514_string()
