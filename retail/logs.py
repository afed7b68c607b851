"""Logging set-up for entry points. Library modules only call ``logging.getLogger(__name__)``."""

from __future__ import annotations

import logging

from rich.logging import RichHandler

# Drivers that log every reconnect attempt at INFO/WARNING: useful when debugging them, noise
# otherwise. ``--verbose`` lets them through.
_NOISY = ("cassandra", "cassandra.cluster", "cassandra.connection", "cassandra.pool", "httpx")


def configure(level: str = "INFO", *, verbose: bool = False) -> None:
    """Send log records to stderr through rich, with driver noise muted unless ``verbose``."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else level,
        format="%(message)s",
        datefmt="%H:%M:%S",
        handlers=[RichHandler(show_path=False, rich_tracebacks=True)],
        force=True,
    )
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.ERROR)
