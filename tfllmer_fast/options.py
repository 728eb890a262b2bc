"""``HeadOptions``: how a query row and an item row make a logit.

The one definition of the scoring settings. The public functions build it
once from their keyword arguments (``HeadOptions.make`` validates), and it
travels whole from there: to the custom ops (whose schemas are generated from
its fields), to the ranking ops, to ``NormalizedSoftmaxHead`` and the models.
"""

from __future__ import annotations

from typing import NamedTuple

DEFAULT_TEMPERATURE = 1.0
"""The library's one default temperature. With unnormalized queries
(``normalize_hidden=False``, the TF-LLMER head) the query norm is learned and
acts as an inverse temperature, so 1 needs no tuning; every table in README.md
was trained with it."""

_SCHEMA_TYPES = {float: "float", bool: "bool", int: "int"}


class HeadOptions(NamedTuple):
    """``logit_ij = <h'_i, e'_j> / temperature`` with ``e'_j = e_j / max(||e_j||, eps)``
    when ``normalize_items`` and ``h'_i`` likewise when ``normalize_hidden``."""

    temperature: float = DEFAULT_TEMPERATURE
    normalize_items: bool = True
    normalize_hidden: bool = False
    eps: float = 1e-12

    @classmethod
    def make(cls, temperature: float = DEFAULT_TEMPERATURE, normalize_items: bool = True,
             normalize_hidden: bool = False, eps: float = 1e-12) -> HeadOptions:
        """Validated options with plain Python types (custom ops reject numpy scalars)."""
        temperature, eps = float(temperature), float(eps)
        if not temperature > 0 or temperature == float("inf"):
            raise ValueError(f"temperature must be a positive finite number, got {temperature}")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        return cls(temperature, bool(normalize_items), bool(normalize_hidden), eps)

    @classmethod
    def schema(cls) -> str:
        return schema_of(cls)


class LossOptions(NamedTuple):
    """The cross-entropy's own settings, beside ``HeadOptions``."""

    ignore_index: int = -100
    label_smoothing: float = 0.0

    @classmethod
    def make(cls, ignore_index: int = -100, label_smoothing: float = 0.0) -> LossOptions:
        label_smoothing = float(label_smoothing)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1], got {label_smoothing}")
        return cls(int(ignore_index), label_smoothing)

    @classmethod
    def schema(cls) -> str:
        return schema_of(cls)


def schema_of(options_type) -> str:
    """A NamedTuple's fields as a torch.library schema fragment, in field order
    (the type read from each default), so an op's signature cannot drift from it."""
    return ", ".join(f"{_SCHEMA_TYPES[type(d)]} {name}" for name, d in options_type._field_defaults.items())
