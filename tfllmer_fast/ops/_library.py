"""Custom-op registration: a schema, one implementation for every device, a fake."""

from __future__ import annotations

import contextlib
import functools

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
    torch.library.register_kernel(qualname, None, without_autocast(impl))
    torch.library.register_fake(qualname, fake)
    return getattr(getattr(torch.ops, NAMESPACE), name).default


def without_autocast(fn):
    """``fn`` with autocast off: an op's body picks its own dtypes (the compute
    dtype it was handed), and a matmul autocast would round to 16 bits behind
    its back (the smoothing term, say) breaks the roundings it keeps equal."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with without_autocast_context():
            return fn(*args, **kwargs)

    return run


@contextlib.contextmanager
def without_autocast_context():
    """Autocast off on CPU and CUDA: the references pick their own dtypes (the
    compute dtype they are handed, scores in fp32)."""
    with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
        yield


def head_options(args: tuple, start: int) -> HeadOptions:
    return HeadOptions(*args[start : start + HEAD_FIELDS])


def loss_options(args: tuple, start: int) -> LossOptions:
    return LossOptions(*args[start : start + LOSS_FIELDS])
