"""Optimization diagnostics of an item table and a batch of queries (TF-LLMER, Sections 3.3 and 5).

Plain torch in fp64 on the small per-row sets; the hard negatives come from
the fused ``topk_scores``. Formulas:

- ``norm_disparity(E) = max_j ||e_j|| / min_j ||e_j||`` over rows with nonzero norm.
- ``erank(M) = exp(-sum_k q_k log q_k)`` with ``q = sigma / sum(sigma)`` the
  normalized singular values (Roy and Vetterli's effective rank).
- Effective set of query i: its target plus the ``m - 1`` highest-scoring
  other items (excluded items left out, ties to the smaller id); ``p`` is the
  softmax of the logits over that set.
- Effective coherence ``xi_i = max_{j != k in S_i} |cos(e_j, e_k)|``.
- Condition number: the Hessian of the cross-entropy over ``S_i`` with
  respect to the query is ``E_S^T (diag(p) - p p^T) E_S / T^2`` (rows
  normalized when the head normalizes items); its nonzero eigenvalues are
  those of ``C^(1/2) G C^(1/2)`` with ``C = diag(p) - p p^T`` and ``G = E_S E_S^T``,
  and ``kappa_i`` is the ratio of the largest to the smallest of them (the
  temperature cancels).
- Gershgorin bound on the Gram matrix's condition number, for unit rows:
  ``(1 + (m-1) xi) / (1 - (m-1) xi)`` where ``(m-1) xi < 1`` (NaN elsewhere).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import HeadOptions, topk_scores
from ..options import resolve_head_options

# Eigenvalues below this fraction of the largest count as zero (C has the
# all-ones vector in its null space, so at most m - 1 are nonzero).
RELATIVE_ZERO = 1e-9


def norm_disparity(item_emb: Tensor) -> float:
    """max / min row norm over the rows with nonzero norm (padding rows drop out)."""
    norms = torch.linalg.vector_norm(item_emb.detach().double(), dim=1)
    norms = norms[norms > 0]
    if norms.numel() == 0:
        raise ValueError("item_emb has no row with nonzero norm")
    return float(norms.max() / norms.min())


def norm_quantiles(item_emb: Tensor, qs=(0.0, 0.1, 0.5, 0.9, 1.0)) -> dict:
    norms = torch.linalg.vector_norm(item_emb.detach().double(), dim=1)
    norms = norms[norms > 0]
    return {f"q{int(q * 100)}": float(torch.quantile(norms, q)) for q in qs}


def erank(matrix: Tensor) -> float:
    """exp of the entropy of the normalized singular values: 1 for rank one,
    min(rows, cols) for orthogonal rows of equal norm."""
    sigma = torch.linalg.svdvals(torch.as_tensor(matrix).detach().double())
    total = sigma.sum()
    if total == 0:
        raise ValueError("erank of a zero matrix is undefined")
    q = sigma / total
    q = q[q > 0]
    return float(torch.exp(-(q * q.log()).sum()))


class EffectiveStats(NamedTuple):
    coherence: Tensor  # (B,) effective coherence xi
    kappa: Tensor  # (B,) condition number of the Hessian in the effective subspace
    gershgorin: Tensor  # (B,) (1 + (m-1) xi) / (1 - (m-1) xi), NaN where (m-1) xi >= 1
    items: Tensor  # (B, m) the effective set, target first


def effective_stats(hidden: Tensor, item_emb: Tensor, targets: Tensor, *, options: HeadOptions | None = None,
                    m: int = 16, exclude=None, **head_options) -> EffectiveStats:
    """Per-query coherence and condition number over the effective set (see the
    module docstring). hidden (B, d), item_emb (N, d), targets (B,);
    ``exclude`` a CSR pair ``(indptr, items)`` of items that are not negatives
    (the user's seen items); ``options`` (or its fields' keywords) score as
    the head does. Plain torch equivalent of kappa for one row::

        S = [t] + top_(m-1) other items; E = rows of S (normalized); p = softmax(h @ E.T / T)
        lam = eigvalsh(E.T @ (diag(p) - outer(p, p)) @ E); kappa = lam[lam > 0].max() / lam[lam > 0].min()
    """
    head = resolve_head_options(options, head_options)
    temperature, normalize_items = head.temperature, head.normalize_items
    if head.normalize_hidden:
        hidden = F.normalize(hidden, dim=-1, eps=head.eps)
    if not 2 <= m <= item_emb.shape[0]:
        raise ValueError(f"m must lie in 2..N = {item_emb.shape[0]}, got {m}")
    B = hidden.shape[0]
    device = hidden.device
    targets = targets.long()
    # The target is never its own negative: add it to each row's exclusions.
    if exclude is None:
        indptr, items = torch.arange(B + 1, device=device), targets
    else:
        indptr, items = (torch.as_tensor(x, device=device).long() for x in exclude)
        rows = torch.repeat_interleave(torch.arange(B, device=device), indptr.diff())
        rows = torch.cat([rows, torch.arange(B, device=device)])
        items = torch.cat([items, targets])
        order = torch.argsort(rows, stable=True)
        items = items[order]
        indptr = torch.cat([indptr.new_zeros(1), torch.bincount(rows, minlength=B).cumsum(0)])
    with torch.no_grad():
        negatives = topk_scores(hidden.float(), item_emb.float(), m - 1, options=head,
                                exclude=(indptr, items)).indices
        if bool((negatives < 0).any()):
            raise ValueError(f"some rows have fewer than m - 1 = {m - 1} candidate negatives after exclusion")
        sets = torch.cat([targets[:, None], negatives], dim=1)
        rows = item_emb.detach().double()[sets]  # (B, m, d)
        unit = F.normalize(rows, dim=-1, eps=head.eps)
        used = unit if normalize_items else rows
        logits = torch.einsum("bd,bmd->bm", hidden.detach().double(), used) / temperature
        p = torch.softmax(logits, dim=1)
        cos = unit @ unit.transpose(1, 2)
        cos.diagonal(dim1=1, dim2=2).zero_()
        coherence = cos.abs().amax(dim=(1, 2))
        kappa = _kappa(p, used @ used.transpose(1, 2))
        spread = (m - 1) * coherence
        gershgorin = torch.where(spread < 1, (1 + spread) / (1 - spread), float("nan"))
    return EffectiveStats(coherence.float(), kappa.float(), gershgorin.float(), sets)


def _kappa(p: Tensor, gram: Tensor) -> Tensor:
    """Ratio of the extreme nonzero eigenvalues of C^(1/2) G C^(1/2), C = diag(p) - p p^T (batched)."""
    c = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    values, vectors = torch.linalg.eigh(c)
    root = vectors @ torch.diag_embed(values.clamp_min(0).sqrt()) @ vectors.transpose(1, 2)
    lam = torch.linalg.eigvalsh(root @ gram @ root)
    top = lam.amax(dim=1, keepdim=True)
    nonzero = lam > RELATIVE_ZERO * top
    smallest = torch.where(nonzero, lam, float("inf")).amin(dim=1)
    return top.squeeze(1) / smallest
