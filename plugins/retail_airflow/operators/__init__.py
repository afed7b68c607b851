"""Operators for the platform's operations, one module per area."""
