"""Typed settings, read once from the environment (prefix ``RETAIL_``) and validated at start-up.

Every endpoint and credential flows from here (and, in DAGs, from Airflow Connections), never
from literals in the code: when authentication is switched on, this is the one place to change.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "retail-platform"


class Settings(BaseSettings):
    """Where the platform keeps its state and downloads, and how it reaches the servers."""

    model_config = SettingsConfigDict(env_prefix="RETAIL_", extra="ignore")

    state_dir: Path = Field(
        default=PROJECT_ROOT / ".run",
        description="Runtime state: the local stack's node dirs, PIDs, logs, Airflow home.",
    )
    cache_dir: Path = Field(
        default_factory=_default_cache_dir,
        description="Downloads (server jars, binaries), shared by every clone on this machine.",
    )
    topology_file: Path | None = Field(
        default=None,
        description=(
            "The topology JSON (Topology.to_json()) that clients read: the consumers, `retail "
            "migrate`, `retail produce`. Unset: the local stack's, "
            "<state_dir>/stack/topology.json. A deployment (a consumer container) points it at "
            "its own file."
        ),
    )
    profile: str = Field(default="test", description="Stack profile used when none is given.")
    topic_prefix: str = Field(default="retail", description="Kafka topics are PREFIX.orders ...")
    topic_partitions: int = Field(default=12, ge=1, le=256)
    cassandra_username: str | None = None
    cassandra_password: SecretStr | None = None
    log_level: str = "INFO"

    @property
    def stack_dir(self) -> Path:
        return self.state_dir / "stack"

    @property
    def topology_path(self) -> Path:
        """Where the topology clients use is read from: ``RETAIL_TOPOLOGY_FILE``, else the file
        ``retail stack up`` writes for the local stack."""
        return self.topology_file or self.stack_dir / "topology.json"


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, validated on first use."""
    return Settings()
