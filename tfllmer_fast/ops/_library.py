"""Custom-op registration: a schema, one implementation for every device, a fake."""

from __future__ import annotations

import torch

from ..options import HeadOptions, LossOptions

NAMESPACE = "tfllmer_fast"
HEAD_FIELDS = len(HeadOptions._fields)
LOSS_FIELDS = len(LossOptions._fields)


def define_op(name: str, schema: str, impl, fake):
    """Register ``tfllmer_fast::name`` with ``schema`` (``"(args) -> outputs"``,
    where ``{head}`` and ``{loss}`` expand to the option fields) and return the
    op. Options arrive positionally in field order: ``head_options(args, i)``
    rebuilds them."""
    qualname = f"{NAMESPACE}::{name}"
    torch.library.define(qualname, schema.format(head=HeadOptions.schema(), loss=LossOptions.schema()))
    torch.library.register_kernel(qualname, None, impl)
    torch.library.register_fake(qualname, fake)
    return getattr(getattr(torch.ops, NAMESPACE), name).default


def head_options(args: tuple, start: int) -> HeadOptions:
    return HeadOptions(*args[start : start + HEAD_FIELDS])


def loss_options(args: tuple, start: int) -> LossOptions:
    return LossOptions(*args[start : start + LOSS_FIELDS])
