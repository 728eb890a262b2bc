"""Shared inputs and error measures for the normalized softmax CE tests."""

from __future__ import annotations

import torch

from tfllmer_fast.reference import normalized_ce_rows

REF_OPTION_KEYS = ("temperature", "normalize_items", "normalize_hidden", "eps", "ignore_index", "label_smoothing")


def make_inputs(B, N, D, dtype, device, *, ignore_rows=(), zero_items=(), planted=0, scale=1.0):
    """Queries, items and targets. ``planted`` item rows are set equal to the
    first queries (with their targets) so the softmax is peaked."""
    hidden = torch.randn(B, D, device=device) * scale
    items = torch.randn(N, D, device=device)
    targets = torch.randint(0, N, (B,), device=device)
    for i in range(min(planted, B)):
        items[(7 * i + 3) % N] = hidden[i] * 3.0
        targets[i] = (7 * i + 3) % N
    for j in zero_items:
        items[j] = 0
    for i in ignore_rows:
        targets[i] = -100
    return hidden.to(dtype), items.to(dtype), targets


def oracle(hidden, items, targets, weight=None, reduction="mean", **options):
    """fp64 loss, lse and gradients of the plain torch expression."""
    h = hidden.detach().double().requires_grad_()
    e = items.detach().double().requires_grad_()
    ref_opts = {k: v for k, v in options.items() if k in REF_OPTION_KEYS}
    rows, lse = normalized_ce_rows(h, e, targets, **ref_opts)
    ignore = ref_opts.get("ignore_index", -100)
    loss = reduce_rows(rows, targets, weight, ignore, reduction)
    loss.sum().backward()
    return loss.detach(), lse.detach(), h.grad, e.grad


def reduce_rows(rows, targets, weight, ignore_index, reduction):
    if weight is not None:
        rows = rows * weight.double()
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    valid = (targets != ignore_index).double()
    w = valid if weight is None else valid * weight.double()
    return rows.sum() / w.sum()


def rel_err(x, ref, floor=1e-30):
    """||x - ref|| / max(||ref||, floor); losses use floor 1 (they are O(log N),
    and an exact 0 such as log(1) would make any rounding infinitely large)."""
    x = x.detach().double().cpu()
    ref = ref.detach().double().cpu()
    return ((x - ref).norm() / ref.norm().clamp_min(floor)).item()


def plain_torch_result(hidden, items, targets, weight=None, reduction="mean", **options):
    """The textbook expression evaluated in the inputs' own dtype."""
    h = hidden.detach().clone().requires_grad_()
    e = items.detach().clone().requires_grad_()
    ref_opts = {k: v for k, v in options.items() if k in REF_OPTION_KEYS}
    rows, lse = normalized_ce_rows(h, e, targets, **ref_opts)
    loss = reduce_rows(rows, targets, weight, ref_opts.get("ignore_index", -100), reduction)
    loss.sum().backward()
    return loss.detach(), lse.detach(), h.grad, e.grad


def budget(torch_err: float, logit_scale: float = 0.0) -> float:
    """Allowed kernel error: a small multiple of what torch itself makes in the
    same dtype, with a floor at a few fp32 roundings for exact-ish cases. The
    floor grows with the largest |logit|: an absolute error of one rounding of
    the largest logit moves every probability by that much relative, and fp32
    at torch's default precision runs 3-pass TF32 (22 bits a product, where an
    FMA keeps 24)."""
    return 3.0 * torch_err + 1e-6 + 6e-8 * logit_scale


def logit_scale(hidden, items, **options) -> float:
    """max |logit| in fp64 (the budget's floor)."""
    from tfllmer_fast.reference import normalized_logits

    head = {k: options[k] for k in ("temperature", "normalize_items", "normalize_hidden", "eps") if k in options}
    return normalized_logits(hidden.double(), items.double(), **head).abs().max().item()
