"""``HeadOptions``: how a query row and an item row make a logit.

The one definition of the scoring settings. Every public op, module and
reference takes them the same way: ``options=HeadOptions(...)`` whole, or its
field names as keywords (``temperature=0.5``), which ``resolve_head_options``
validates into one object; from there it travels whole, to the custom ops
(whose schemas are generated from its fields), the kernels and the references.
"""

from __future__ import annotations

from typing import NamedTuple

DEFAULT_TEMPERATURE = 1.0
"""The library's one default temperature. With unnormalized queries
(``normalize_hidden=False``, the TF-LLMER head) the query norm is learned and
acts as an inverse temperature, so 1 needs no tuning; every result in docs/
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


def resolve_head_options(options: HeadOptions | None = None, keywords: dict | None = None) -> HeadOptions:
    """The head options of one call: ``options`` (a ``HeadOptions``) or the
    keywords named after its fields, not both; validated (``HeadOptions.make``)."""
    keywords = keywords or {}
    unknown = sorted(set(keywords) - set(HeadOptions._fields))
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {', '.join(unknown)}; the head options are "
                        f"{', '.join(HeadOptions._fields)}")
    if options is None:
        return HeadOptions.make(**keywords)
    if not isinstance(options, HeadOptions):
        raise TypeError(f"options must be a HeadOptions, got {type(options).__name__}")
    if keywords:
        raise TypeError(f"pass the head options either as options= or as keywords, not both "
                        f"(got options= and {', '.join(sorted(keywords))})")
    return HeadOptions.make(*options)


def schema_of(options_type) -> str:
    """A NamedTuple's fields as a torch.library schema fragment, in field order
    (the type read from each default), so an op's signature cannot drift from it."""
    return ", ".join(f"{_SCHEMA_TYPES[type(d)]} {name}" for name, d in options_type._field_defaults.items())
