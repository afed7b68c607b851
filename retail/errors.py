"""The project's root exception. Every error we raise on purpose derives from it, so entry
points can tell "the platform refused, with a reason" from a bug."""

from __future__ import annotations


class RetailError(Exception):
    """Root of every error the platform raises on purpose. The message says what to do."""


class ConfigError(RetailError):
    """A setting, profile or topology request that cannot be honoured."""
