"""Who each client is: the platform's logins and the CA its servers' certificates chain to,
read from one place.

The local stack generates them on its first ``up`` (:mod:`stack.secrets`) into
``<state dir>/stack/secrets/``: ``credentials.json`` (mode 0600, created so, never chmod-ed
after) and ``ca.pem``, the public certificate of the stack's own CA. A deployment points
``RETAIL_SECRETS_DIR`` at a mounted directory of the same shape, or gives a client its login
directly (``RETAIL_CASSANDRA_USERNAME``/``_PASSWORD``).

``credentials.json`` maps a system to its logins::

    {"cassandra": {"retail_admin": "...", "retail_consumer": "...", ...},
     "kafka": {"admin": "...", "producer": "...", "consumer-eu-west": "...", ...},
     "jolokia": {"monitor": "..."},
     "airflow": {"admin": "...", "operator": "...", "viewer": "..."}}

Each client takes the least it needs (DESIGN.md, "Security"): the consumers write the event and
rollup tables, the operations run the DAGs and migrations, the analyst reads.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from retail.errors import ConfigError
from retail.settings import Settings, get_settings

log = logging.getLogger(__name__)

CREDENTIALS_FILE = "credentials.json"
CA_FILE = "ca.pem"

# Cassandra roles by what they are for. The admin role replaces the built-in `cassandra`
# superuser, which the stack disables once the admin exists.
CASSANDRA_ADMIN = "retail_admin"
CASSANDRA_CONSUMER = "retail_consumer"
CASSANDRA_OPS = "retail_ops"
CASSANDRA_ANALYST = "retail_analyst"
CASSANDRA_ROLES = (CASSANDRA_ADMIN, CASSANDRA_CONSUMER, CASSANDRA_OPS, CASSANDRA_ANALYST)

# Kafka principals (SCRAM users). The consumers have one per regional group: a group may read
# its region's topics and commit its own offsets only.
KAFKA_ADMIN = "admin"
KAFKA_PRODUCER = "producer"
KAFKA_OPS = "ops"


def kafka_consumer(dc: str) -> str:
    """The Kafka user of the consumers of ``dc``."""
    return f"consumer-{dc}"


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to a new file only its owner can read, replacing ``path`` atomically: the
    file is created with ``mode`` by the open call (``O_EXCL``), never readable by others in the
    moment before a chmod. (``stack.secrets.write_private`` is this one; ``mode`` 0644 only for
    a file a container's own user must read, such as a certificate.)"""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


JOLOKIA_USER = "monitor"
AIRFLOW_USERS = ("admin", "operator", "viewer")


@dataclass(frozen=True)
class Login:
    """A username and its password; the password never shows in a repr or a log line."""

    username: str
    password: SecretStr = field(repr=False)


class Credentials:
    """The logins and CA of one platform, as written in its secrets directory."""

    def __init__(self, directory: Path, logins: dict[str, dict[str, str]]) -> None:
        self.directory = directory
        self._logins = logins

    @classmethod
    def load(cls, directory: Path) -> Credentials:
        path = directory / CREDENTIALS_FILE
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(
                f"no credentials at {path}: `retail stack up` generates them for the local "
                "stack; a deployment sets RETAIL_SECRETS_DIR to its mounted secrets"
            ) from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON ({exc})") from None
        return cls(directory, raw)

    @property
    def ca_file(self) -> Path:
        """The CA certificate every server's certificate chains to."""
        return self.directory / CA_FILE

    def login(self, system: str, username: str) -> Login:
        try:
            password = self._logins[system][username]
        except KeyError:
            known = ", ".join(f"{s}/{u}" for s, users in self._logins.items() for u in users)
            raise ConfigError(
                f"no {system} login {username!r} in {self.directory / CREDENTIALS_FILE}; "
                f"it has: {known}"
            ) from None
        return Login(username, SecretStr(password))

    def masked(self) -> dict[str, dict[str, str]]:
        """The logins with every password replaced by ``***``: what may be shown."""
        return {system: dict.fromkeys(users, "***") for system, users in self._logins.items()}


def stack_credentials(settings: Settings | None = None) -> Credentials:
    """The credentials of the platform this process talks to (``RETAIL_SECRETS_DIR``, else the
    local stack's)."""
    return Credentials.load((settings or get_settings()).secrets_path)
