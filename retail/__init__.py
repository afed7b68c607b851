"""Core library of the retail data platform: settings, topology, data access and operations."""

from __future__ import annotations

__version__ = "0.1.0"
