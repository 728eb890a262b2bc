"""Spectrum balancing of a batch of embeddings: DirectSpec and DirectSpec+
(Peng, Sugiyama, Liu, Mine, "Balancing Embedding Spectrum for
Recommendation", IEEE TKDE).

Embeddings collapse onto a few directions during training (the effective rank
``diagnostics.erank`` falls). DirectSpec moves a batch's L2-normalized rows
``Hn`` one step down the decorrelation loss ``(1/4) sum_{u,v} (hn_u . hn_v)^2``,
whose gradient is ``Hn Hn^T Hn``:

    direct_spec(H, alpha)              = Hn - alpha Hn Hn^T Hn
    direct_spec_plus(H, alpha, gamma)  = Hn - alpha softmax(Hn Hn^T * gamma, dim=-1) Hn

With ``Hn = U S V^T`` the first is ``U (S - alpha S^3) V^T``: large singular
values shrink more than small ones, so the spectrum flattens. DirectSpec+
weights each row's decorrelation by a softmax over its similarities with an
element-wise temperature matrix ``gamma``: pairs close on the user-item graph
get the smaller ``tau_0`` and are pushed apart more gently than the others
(``tau_1``); ``distance_temperatures`` builds it for a batch. Both are
differentiable; gradients flow through the normalization and the transform,
as in the authors' code (github.com/tanatosuu/directspec), whose models score
with the raw embeddings at inference.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..graph import UserItemGraph, like_input

EPS = 1e-12  # F.normalize's: zero rows stay zero instead of becoming NaN


def _check(H: Tensor, alpha: float) -> None:
    if H.ndim != 2:
        raise ValueError(f"H must be (B, d), got shape {tuple(H.shape)}")
    if not H.is_floating_point():
        raise ValueError(f"H must be a floating-point tensor, got {H.dtype}")
    if not alpha >= 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")


def direct_spec(H: Tensor, alpha: float) -> Tensor:
    """(B, d) -> (B, d): ``Hn - alpha Hn Hn^T Hn``, ``Hn = F.normalize(H, dim=-1)``.

    Computed as ``Hn - alpha Hn (Hn^T Hn)``: O(B d^2), no (B, B) matrix."""
    _check(H, alpha)
    hn = F.normalize(H, dim=-1, eps=EPS)
    return hn - alpha * (hn @ (hn.T @ hn))


def direct_spec_plus(H: Tensor, alpha: float, gamma) -> Tensor:
    """(B, d) -> (B, d): ``Hn - alpha softmax(Hn Hn^T * gamma, dim=-1) Hn``.

    ``gamma``: a scalar or a (B, B) tensor of inverse temperatures (element-wise
    product with the cosine matrix; ``distance_temperatures`` makes one)."""
    _check(H, alpha)
    hn = F.normalize(H, dim=-1, eps=EPS)
    if isinstance(gamma, Tensor) and gamma.ndim:
        if gamma.shape != (H.shape[0], H.shape[0]):
            raise ValueError(f"gamma must be a scalar or ({H.shape[0]}, {H.shape[0]}), got {tuple(gamma.shape)}")
        gamma = gamma.to(hn)
    if not bool(torch.isfinite(torch.as_tensor(gamma)).all()):
        raise ValueError("gamma has NaN or Inf")
    weights = torch.softmax((hn @ hn.T) * gamma, dim=-1)
    return hn - alpha * (weights @ hn)


def distance_temperatures(graph, batch, *, max_distance: int = 2, tau_0: float = 3.5, tau_1: float = 4.0,
                          side: str = "users", device=None) -> Tensor:
    """(B, B) float32: ``tau_0`` where two batch nodes of ``side`` lie within
    ``max_distance`` hops on the user-item graph, ``tau_1`` elsewhere.
    ``graph``: a ``graph.UserItemGraph`` (kept by a training loop: cupyx for
    CUDA batches), or a users x items SciPy / cupyx sparse matrix. The
    paper's best on Yelp: K = 2, tau_0 = 3.5, tau_1 = 4 (the defaults here)."""
    if not tau_0 <= tau_1:
        raise ValueError(f"tau_0 must be <= tau_1 (correlated pairs decorrelate slower), got {tau_0} > {tau_1}")
    if not isinstance(graph, UserItemGraph):
        graph = UserItemGraph(graph)
    template = batch if isinstance(batch, Tensor) else torch.as_tensor(np.asarray(batch), device=device)
    close = like_input(graph.within_distance(template, max_distance, side=side), template)
    return torch.where(close.to(device or template.device), float(tau_0), float(tau_1)).float()
