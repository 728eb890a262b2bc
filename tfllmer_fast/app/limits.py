"""Allowed ranges declared on dataclass fields, read by validation and the CLI."""

from __future__ import annotations

import dataclasses
from dataclasses import field


def bounded(default, low=None, high=None, *, choices=None):
    """A dataclass field whose value must lie in [low, high] (or in ``choices``)."""
    return field(default=default, metadata={"low": low, "high": high, "choices": choices})


def describe_limit(f: dataclasses.Field) -> str:
    """'in [0, 0.5]', '>= 1', 'one of a, b' or '' for an unconstrained field."""
    low, high, choices = (f.metadata.get(k) for k in ("low", "high", "choices"))
    if choices:
        return "one of " + ", ".join(map(str, choices))
    if low is not None and high is not None:
        return f"in [{low}, {high}]"
    if low is not None:
        return f">= {low}"
    if high is not None:
        return f"<= {high}"
    return ""


def check_limit(f: dataclasses.Field, value, name: str) -> None:
    low, high, choices = (f.metadata.get(k) for k in ("low", "high", "choices"))
    bad = (choices is not None and value not in choices) or (
        value is not None and ((low is not None and not value >= low) or (high is not None and not value <= high)))
    if bad:
        raise ValueError(f"{name} must be {describe_limit(f)}, got {value!r}")


def validate_fields(obj, prefix: str = "") -> None:
    for f in dataclasses.fields(obj):
        if f.metadata:
            check_limit(f, getattr(obj, f.name), prefix + f.name)
