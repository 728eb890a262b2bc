"""``target_rank`` and ``topk_scores``: full-ranking evaluation over all items.

Input checks and dispatch; the plain-torch chunked reference does the work
(one chunk of scores at a time, never B x N).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from ..options import HeadOptions, resolve_head_options
from ..reference.ranking import target_rank_reference, topk_reference
from . import _checks
from ._kernels import kernels
from ._library import HEAD_FIELDS, define_op, head_options, without_autocast_context
from ._scales import item_scale, row_scale


class TopK(NamedTuple):
    values: Tensor  # (B, k) scores, descending
    indices: Tensor  # (B, k) item ids


def _check_common(hidden, item_emb, exclude):
    _checks.check_float_tensor("hidden", hidden, ndim_min=2)
    _checks.check_float_tensor("item_emb", item_emb, ndim_min=2)
    if hidden.dim() != 2 or item_emb.dim() != 2:
        raise ValueError(f"hidden (B, d) and item_emb (N, d) must be 2-D, got {tuple(hidden.shape)} and "
                         f"{tuple(item_emb.shape)}")
    if hidden.shape[1] != item_emb.shape[1]:
        raise ValueError(f"hidden has last dimension {hidden.shape[1]} but item_emb rows have {item_emb.shape[1]}")
    _checks.check_same_device(hidden=hidden, item_emb=item_emb)
    if exclude is None:
        return None
    indptr, items = (torch.as_tensor(x, device=hidden.device) for x in exclude)
    if torch.compiler.is_compiling():
        return indptr.long().contiguous(), items.long().contiguous()
    _checks.check_index_tensor("exclude indptr", indptr)
    _checks.check_index_tensor("exclude items", items)
    if indptr.dim() != 1 or indptr.numel() != hidden.shape[0] + 1:
        raise ValueError(f"exclude indptr must have B + 1 = {hidden.shape[0] + 1} entries, got {indptr.numel()}")
    if items.numel() and (int(items.min()) < 0 or int(items.max()) >= item_emb.shape[0]):
        raise ValueError(f"exclude items must lie in [0, {item_emb.shape[0]})")
    if int(indptr[0]) != 0 or int(indptr[-1]) != items.numel() or bool((indptr[1:] < indptr[:-1]).any()):
        raise ValueError("exclude indptr must start at 0, never decrease and end at len(items)")
    return indptr.long().contiguous(), items.long().contiguous()


def target_rank(hidden: Tensor, item_emb: Tensor, targets: Tensor, *, options: HeadOptions | None = None,
                exclude=None, impl: str = "auto", chunk_size: int | None = None, **head_options) -> Tensor:
    """Rank of each row's target among all items: (B,) int64.

    hidden (B, d), item_emb (N, d), targets (B,); ``exclude`` a CSR pair
    ``(indptr (B + 1,), items)`` of items to leave out per row (the target is
    never excluded); ``options`` (or its fields' keywords) as in
    ``normalized_softmax_ce``. rank = 1 + the number of other candidates whose score is
    >= the target's: ties count against the target (every score, the
    target's included, comes from one expression, so an item equal to the
    target ties with it exactly, excluded or not). NaN never makes a hit: a
    NaN item counts against the target, a NaN target ranks last. ``impl``: ``"triton"`` (one
    pass over the items, no B x N tensor), ``"torch"`` (the chunked reference),
    ``"auto"``. Plain torch equivalent::

        s = normalized_logits(hidden, item_emb, ...); s[excluded] = -inf
        1 + (s >= s.gather(1, t[:, None])).sum(1) - 1
    """
    head = resolve_head_options(options, head_options)
    exclude = _check_common(hidden, item_emb, exclude)
    _checks.check_index_tensor("targets", targets)
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets has shape {tuple(targets.shape)}, expected ({hidden.shape[0]},)")
    if not torch.compiler.is_compiling():
        _checks.raise_on_invalid_targets(targets, item_emb.shape[0], ignore_index=-(2**62))
    dtype = _checks.compute_dtype(hidden, item_emb)
    impl = _checks.resolve_impl(_checks.ranking_impl(impl), hidden.device, dtype, hidden.shape[-1])
    targets = targets.long().contiguous()  # a strided view (seq[:, -1]) is read as laid out
    with torch.no_grad():
        if impl == "torch":
            with without_autocast_context():
                return target_rank_reference(hidden.to(dtype), item_emb.to(dtype), targets, options=head,
                                             exclude=exclude, chunk_size=chunk_size)
        indptr, items = exclude if exclude is not None else (None, None)
        return _target_rank_op(hidden, item_emb, targets, indptr, items, *head, dtype)


def _target_rank_triton(hidden: Tensor, item_emb: Tensor, targets: Tensor, exclude_indptr: Optional[Tensor],
                        exclude_items: Optional[Tensor], *args) -> Tensor:
    head, compute_dtype = head_options(args, 0), args[HEAD_FIELDS]
    _checks.raise_on_invalid_targets(targets, item_emb.shape[0], ignore_index=-(2**62))
    # A positive row scale (temperature, query norm) does not change a row's
    # order: the kernel ranks by <h, e_j> r_j alone.
    r = item_scale(item_emb, head)
    exclude = None
    if exclude_indptr is not None:
        exclude = unique_exclusions(exclude_indptr, exclude_items, hidden.shape[0], item_emb.shape[0])
    counts, _ = kernels().target_rank_counts(hidden, item_emb, r, targets.long(), exclude=exclude,
                                             has_nan=may_score_nan(hidden, item_emb), compute_dtype=compute_dtype)
    return 1 + counts


def may_score_nan(hidden: Tensor, item_emb: Tensor) -> bool:
    """Whether a score can be NaN: some input is not finite (a synchronizing
    check; the ranking kernels then take their NaN-aware path)."""
    return not bool(torch.isfinite(hidden).all() & torch.isfinite(item_emb).all())


def unique_exclusions(indptr: Tensor, items: Tensor, num_rows: int, num_items: int) -> tuple[Tensor, Tensor, Tensor]:
    """A CSR exclusion list with each row's items sorted and without repeats:
    ``(indptr (B + 1,) int64, items int32, rows int32)``, contiguous, ``rows`` the
    row of each entry (the kernels read these, whatever layout the caller passed)."""
    rows = torch.repeat_interleave(torch.arange(num_rows, device=items.device), indptr.diff(),
                                   output_size=items.numel())
    keys = torch.unique(rows * num_items + items.long())
    rows, items = keys // num_items, keys % num_items
    counts = torch.bincount(rows, minlength=num_rows)
    # Ids and rows in int32 (both below 2^31) keep the kernel's gathered tiles small.
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)]), items.int(), rows.int()


_target_rank_op = define_op(
    "target_rank",
    "(Tensor hidden, Tensor item_emb, Tensor targets, Tensor? exclude_indptr, Tensor? exclude_items, {head}, "
    "ScalarType compute_dtype) -> Tensor",
    _target_rank_triton, lambda hidden, *args: hidden.new_empty(hidden.shape[0], dtype=torch.int64),
)


def topk_scores(hidden: Tensor, item_emb: Tensor, k: int, *, options: HeadOptions | None = None, exclude=None,
                impl: str = "auto", chunk_size: int | None = None, **head_options) -> TopK:
    """The k best items per row: ``TopK(values, indices)``, each (B, k), sorted
    by score (ties to the smaller item id; a NaN score first, as a descending
    ``torch.sort`` puts it); excluded items never appear (a row with fewer
    than k candidates pads with score -inf and index -1).

    ``impl="triton"`` keeps a running top-K per row in one pass over the items
    (K = k rounded up to a power of two, at most ``tfllmer_fast.kernels.topk_max_k()``;
    excluded items are skipped inside the kernel); ``"torch"`` sorts chunked
    dense scores; ``"auto"`` takes Triton on CUDA when k fits. Plain torch
    equivalent::

        s = normalized_logits(hidden, item_emb, ...); s[excluded] = -inf
        torch.sort(s, dim=1, descending=True, stable=True)[:, :k]
    """
    head = resolve_head_options(options, head_options)
    exclude = _check_common(hidden, item_emb, exclude)
    if int(k) != k or not 1 <= k <= item_emb.shape[0]:
        raise ValueError(f"k must lie in 1..N = {item_emb.shape[0]}, got {k}")
    dtype = _checks.compute_dtype(hidden, item_emb)
    requested = impl = _checks.ranking_impl(impl)
    impl = _checks.resolve_impl(impl, hidden.device, dtype, hidden.shape[-1])
    if impl == "triton" and (not kernels().topk_supported() or int(k) > kernels().topk_max_k()):
        if requested == "triton":
            raise ValueError(f"impl='triton' serves k <= {kernels().topk_max_k()} (got k={int(k)}) and needs "
                             "tl.argmax; use impl='torch'")
        impl = "torch"
    with torch.no_grad():
        if impl == "torch":
            with without_autocast_context():
                values, indices = topk_reference(hidden.to(dtype), item_emb.to(dtype), int(k), options=head,
                                                 exclude=exclude, chunk_size=chunk_size)
        else:
            indptr, items = exclude if exclude is not None else (None, None)
            longest = int(indptr.diff().max()) if exclude is not None and hidden.shape[0] else 0
            values, indices = _topk_op(hidden, item_emb, indptr, items, int(k), longest, *head, dtype)
    return TopK(values, indices)


def _topk_triton(hidden: Tensor, item_emb: Tensor, exclude_indptr: Optional[Tensor], exclude_items: Optional[Tensor],
                 k: int, longest: int, *args) -> tuple[Tensor, Tensor]:
    head, compute_dtype = head_options(args, 0), args[HEAD_FIELDS]
    r = item_scale(item_emb, head)
    exclude = None if exclude_indptr is None else (exclude_indptr, exclude_items, longest)
    keys = kernels().topk_keys(hidden, item_emb, r, k, exclude=exclude, has_nan=may_score_nan(hidden, item_emb),
                               compute_dtype=compute_dtype)
    scores, indices = kernels().unpack_topk_keys(keys)
    # The kernel ranks by <h, e_j> r_j; the row scale enters the values only.
    return scores * row_scale(hidden, head)[:, None], indices


def _topk_fake(hidden, item_emb, exclude_indptr, exclude_items, k, *args):
    B = hidden.shape[0]
    return hidden.new_empty((B, k), dtype=torch.float32), hidden.new_empty((B, k), dtype=torch.int64)


_topk_op = define_op(
    "topk",
    "(Tensor hidden, Tensor item_emb, Tensor? exclude_indptr, Tensor? exclude_items, int k, int longest, {head}, "
    "ScalarType compute_dtype) -> (Tensor, Tensor)",
    _topk_triton, _topk_fake,
)
