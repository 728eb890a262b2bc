"""Reference normalized softmax cross-entropy in plain torch, chunked over rows.

Each chunk of rows builds its (chunk, N) logits, runs ``F.cross_entropy`` and is
wrapped in activation checkpointing, so neither the forward nor the backward
holds more than one chunk of logits. The gradients come from torch autograd,
which makes this an oracle independent of the hand-derived kernel backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..options import HeadOptions, resolve_head_options

# Rows per chunk are chosen so one chunk of fp32 logits stays near this size.
REFERENCE_CHUNK_BYTES = 256 * 2**20


def normalized_logits(
    hidden: torch.Tensor,
    item_emb: torch.Tensor,
    *,
    options: HeadOptions | None = None,
    **head_options,
) -> torch.Tensor:
    """Dense logits (..., N): ``F.normalize(hidden) @ F.normalize(item_emb).T / temperature``
    (each normalization only when enabled; ``options`` or its fields' keywords)."""
    temperature, normalize_items, normalize_hidden, eps = resolve_head_options(options, head_options)
    if normalize_items:
        item_emb = F.normalize(item_emb, dim=-1, eps=eps)
    if normalize_hidden:
        hidden = F.normalize(hidden, dim=-1, eps=eps)
    logits = hidden @ item_emb.transpose(0, 1)
    return logits if temperature == 1.0 else logits / temperature


def _chunk_losses(hidden, items, targets, temperature, normalize_hidden, eps, ignore_index, label_smoothing):
    logits = normalized_logits(hidden, items, options=HeadOptions(temperature, False, normalize_hidden, eps))
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    # One log-sum-exp serves the loss and the returned lse: F.cross_entropy plus a
    # separate logsumexp made three passes over the (chunk, N) logits, forward and
    # backward, and dominated the CPU step.
    lse = torch.logsumexp(logits, dim=-1)
    ignored = targets == ignore_index
    picked = logits.gather(1, torch.where(ignored, 0, targets).unsqueeze(1)).squeeze(1)
    loss = lse - picked
    if label_smoothing:
        loss = loss + label_smoothing * (picked - logits.mean(dim=-1))
    return loss.masked_fill(ignored, 0.0), lse


def normalized_ce_rows(
    hidden: torch.Tensor,
    item_emb: torch.Tensor,
    targets: torch.Tensor,
    *,
    options: HeadOptions | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    chunk_size: int | None = None,
    **head_options,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row loss and log-sum-exp, both (B,) in fp32 (fp64 for fp64 inputs).

    hidden (B, d), item_emb (N, d), targets (B,) with every entry in [0, N) or
    equal to ``ignore_index`` (rows equal to it get loss 0). Equivalent to::

        logits = normalized_logits(hidden, item_emb, ...)  # then at least fp32
        F.cross_entropy(logits, targets, reduction="none", ...), logits.logsumexp(-1)
    """
    temperature, normalize_items, normalize_hidden, eps = resolve_head_options(options, head_options)
    n_rows, n_items = hidden.shape[0], item_emb.shape[0]
    if chunk_size is None:
        chunk_size = max(1, REFERENCE_CHUNK_BYTES // (4 * max(n_items, 1)))
    items = F.normalize(item_emb, dim=-1, eps=eps) if normalize_items else item_emb
    args = (temperature, normalize_hidden, eps, ignore_index, label_smoothing)
    keep_graph = torch.is_grad_enabled() and (hidden.requires_grad or items.requires_grad)
    losses, lses = [], []
    for start in range(0, n_rows, chunk_size):
        sl = slice(start, start + chunk_size)
        if keep_graph and n_rows > chunk_size:
            loss, lse = checkpoint(_chunk_losses, hidden[sl], items, targets[sl], *args, use_reentrant=False)
        else:
            loss, lse = _chunk_losses(hidden[sl], items, targets[sl], *args)
        losses.append(loss)
        lses.append(lse)
    if not losses:  # no rows: empty results that stay connected to both inputs (zero gradients, as torch gives)
        empty = (hidden.sum(-1) + 0 * items.sum()).to(torch.promote_types(hidden.dtype, torch.float32))
        return empty, empty.detach()
    if len(losses) == 1:
        return losses[0], lses[0]
    return torch.cat(losses), torch.cat(lses)


def plain_normalized_ce(
    hidden: torch.Tensor,
    item_emb: torch.Tensor,
    targets: torch.Tensor,
    *,
    options: HeadOptions | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    **head_options,
) -> torch.Tensor:
    """The unfused textbook head (the benchmark baseline): dense (B, N) logits,
    then ``F.cross_entropy`` with mean reduction."""
    logits = normalized_logits(hidden.reshape(-1, hidden.shape[-1]), item_emb,
                               options=resolve_head_options(options, head_options))
    return F.cross_entropy(
        logits.float(), targets.reshape(-1), ignore_index=ignore_index, label_smoothing=label_smoothing
    )
