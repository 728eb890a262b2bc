"""Sharpness-aware training with item-wise weights on the perturbation (EISAM, read from its abstract).

"Taming the Long Tail: Efficient Item-wise Sharpness-Aware Minimization for
LLM-based Recommender Systems" (2026) has only its abstract public: it
regularizes the loss landscape item by item, so that tail items get their
own sharpness control, at a cost that stays low at scale. This module is a
faithful reading of that abstract, not a reproduction of unpublished code.

SAM (Foret et al., 2021) takes the gradient at ``w + eps`` with
``eps = rho g / ||g||``, ``g`` the gradient at ``w``. Per-item radii cannot
all be honoured by one shared perturbation, so the item-wise version puts
them on its direction: each training target's loss term enters the ascent
gradient with the weight

    s_i = (c_i + 1) ** -exponent      (c_i the item's training count)

(scaled to mean 1 over the training interactions, which only fixes the
units), ``eps = rho g_s / ||g_s||`` with ``g_s`` the gradient of the
``s_target``-weighted mean loss, and the step length stays ``rho``: rare
items steer the perturbation more, so the sharpness of their losses is
penalized more. ``exponent = 0`` is plain SAM. The weights go through the
fused head's per-row ``weight``, so the head stays fused, and a step costs
two forward/backward passes, as SAM's does.
"""

from __future__ import annotations

import contextlib


import numpy as np
import torch
from torch import Tensor

from .config import SAM_MODES


def item_radius_scales(counts, exponent: float) -> Tensor:
    """(N,) float32 ``s_i = (c_i + 1) ** -exponent``, scaled so that its mean over
    the training interactions (each item counted ``c_i`` times) is 1."""
    if not exponent >= 0:
        raise ValueError(f"exponent must be >= 0, got {exponent}")
    counts = torch.as_tensor(np.asarray(counts), dtype=torch.float64)
    if counts.ndim != 1 or bool((counts < 0).any()) or counts.sum() <= 0:
        raise ValueError("counts must be a 1-D array of non-negative counts with a positive total")
    scales = (counts + 1.0) ** -exponent
    return (scales / ((scales * counts).sum() / counts.sum())).float()


class ItemwiseSAM:
    """Wraps any torch optimizer. ``step(closure)`` runs SAM's two passes:
    ``closure(row_weight)`` must zero the gradients, compute the loss (with
    per-row weights ``row_weight(targets)`` when ``row_weight`` is not None),
    call ``backward`` and return the loss.

    ``scales`` (N,) from ``item_radius_scales``, or None for plain SAM. Only
    parameters with a gradient are perturbed; the perturbation is undone
    before the wrapped optimizer steps with the gradient taken at ``w + eps``.
    Returns the loss of the second pass (at the perturbed weights)."""

    def __init__(self, base: torch.optim.Optimizer, *, rho: float = 0.05, scales: Tensor | None = None):
        if not rho >= 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        if scales is not None and (scales.ndim != 1 or not bool(torch.isfinite(scales).all())):
            raise ValueError("scales must be a finite 1-D tensor (one per item id)")
        self.base = base
        self.rho = rho
        self.scales = scales
        self._device_scales = {}

    @property
    def param_groups(self):
        return self.base.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return self.base.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.base.load_state_dict(state)

    def row_weight(self, targets: Tensor) -> Tensor:
        """The perturbation weight of each row, by its target item."""
        if targets.device not in self._device_scales:
            self._device_scales[targets.device] = self.scales.to(targets.device)
        return self._device_scales[targets.device][targets]

    @torch.no_grad()
    def _perturb(self) -> list[tuple[Tensor, Tensor]]:
        params = [p for g in self.base.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return []
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.float()) for p in params]))
        factor = self.rho / norm.clamp_min(1e-12)
        moved = []
        for p in params:
            eps = (p.grad * factor).to(p.dtype)
            p.add_(eps)
            moved.append((p, eps))
        return moved

    def step(self, closure, timed=contextlib.nullcontext):
        """``timed()`` wraps the wrapped optimizer's own step (a profiler phase)."""
        closure(None if self.scales is None else self.row_weight)
        moved = self._perturb()
        loss = closure(None)
        with torch.no_grad():
            for p, eps in moved:
                p.sub_(eps)
        with timed():
            self.base.step()
        return loss





def sharpness_aware(base: torch.optim.Optimizer, mode: str, *, rho: float, exponent: float, item_counts=None):
    """``base`` itself (``mode="off"``), or wrapped for plain (``"sam"``) or
    item-wise (``"itemwise"``, radii from ``item_counts``) SAM."""
    if mode not in SAM_MODES:
        raise ValueError(f"sam must be one of {SAM_MODES}, got {mode!r}")
    if mode == "off":
        return base
    if mode == "itemwise" and item_counts is None:
        raise ValueError("item-wise SAM needs the training count of every item (item_counts)")
    return ItemwiseSAM(base, rho=rho, scales=item_radius_scales(item_counts, exponent) if mode == "itemwise" else None)


def optimizer_step(optimizer, forward_backward, timed=contextlib.nullcontext):
    """One step: ``forward_backward(row_weight=None) -> loss`` (zeroes the
    gradients, computes the loss, backward) once and the optimizer's step, or
    SAM's two passes. ``timed()`` wraps the optimizer's own step. Returns the loss."""
    if isinstance(optimizer, ItemwiseSAM):
        return optimizer.step(forward_backward, timed)
    loss = forward_backward()
    with timed():
        optimizer.step()
    return loss
