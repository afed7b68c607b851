"""Errors of the local stack. Each says which part failed and what to do about it."""

from __future__ import annotations

from retail.errors import RetailError


class StackError(RetailError):
    """The local stack could not do what was asked."""


class FetchError(StackError):
    """A server, agent or binary could not be downloaded or built."""


class ComponentError(StackError):
    """One component did not start or did not become ready; carries the end of its log."""

    def __init__(self, component: str, reason: str, log_tail: str = "", log_path: str = "") -> None:
        self.component = component
        self.reason = reason
        self.log_tail = log_tail
        self.log_path = log_path
        super().__init__(f"{component}: {reason}")
