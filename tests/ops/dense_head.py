"""The head as dense torch: the fp64 oracle, the same-dtype torch path, and the
error floors the property tests allow (measured per row and per item)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Unit roundoff of the kernels' operands: fp32 at torch's default precision is
# 3-pass TF32 (about 22 bits a product), 16-bit operands round p and the
# pre-scaled rows once each.
OPERAND_ROUNDOFF = {torch.float32: 2.0**-21, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
# Relative error of a logit from its fp32 dot (products exact or 3-pass TF32,
# d up to 128 terms summed), beside the operands' own rounding.
LOGIT_ROUNDOFF = 2.0**-20
FP32_ROUNDOFF = 2.0**-23


@dataclass
class HeadCase:
    """One call's arguments, values only (the layout is the test's business)."""

    hidden: torch.Tensor
    items: torch.Tensor
    targets: torch.Tensor
    weight: torch.Tensor | None
    temperature: float
    normalize_items: bool
    normalize_hidden: bool
    label_smoothing: float
    reduction: str
    z_loss: float  # weight of mean(lse^2) added to the loss (a gradient through the lse)
    ignore_index: int = -100


@dataclass
class HeadResult:
    loss: torch.Tensor
    lse: torch.Tensor
    dh: torch.Tensor
    de: torch.Tensor
    logits: torch.Tensor
    dlogits: torch.Tensor  # G = d objective / d logits
    # |a| p (1 - p): how much G moves per unit of logit error (a = the weight of p in G)
    sensitivity: torch.Tensor
    terms: torch.Tensor  # |a| p + |b| ((1 - ls) onehot + ls / N): G's terms before they cancel


def objective(loss: torch.Tensor, lse: torch.Tensor, z_loss: float) -> torch.Tensor:
    total = loss.sum()
    return total + z_loss * (lse**2).mean() if z_loss else total


def dense(case: HeadCase, dtype: torch.dtype, autocast: bool = False) -> HeadResult:
    """The textbook head with dense logits in ``dtype`` (fp64: the oracle), the
    cross-entropy in at least fp32; under ``autocast`` the matmul runs in bf16."""
    h = case.hidden.detach().to(dtype if not autocast else case.hidden.dtype).requires_grad_()
    e = case.items.detach().to(dtype if not autocast else case.items.dtype).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        hn = F.normalize(h, dim=-1, eps=1e-12) if case.normalize_hidden else h
        en = F.normalize(e, dim=-1, eps=1e-12) if case.normalize_items else e
        logits = hn @ en.T
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / case.temperature
    logits.retain_grad()
    valid = case.targets != case.ignore_index
    safe = torch.where(valid, case.targets, 0).long()
    lse = logits.logsumexp(-1)
    raw = lse - logits.gather(1, safe[:, None]).squeeze(1)
    if case.label_smoothing:
        raw = raw + case.label_smoothing * (logits.gather(1, safe[:, None]).squeeze(1) - logits.mean(-1))
    raw.retain_grad()
    rows = torch.where(valid, raw, 0.0)
    if case.weight is not None:
        rows = rows * case.weight.to(rows.dtype)
    if case.reduction == "none":
        loss = rows
    elif case.reduction == "sum":
        loss = rows.sum()
    else:
        w = valid.to(rows.dtype) if case.weight is None else valid * case.weight.to(rows.dtype)
        loss = rows.sum() / w.sum()
    objective(loss, lse, case.z_loss).backward()
    b = raw.grad.detach()
    a = b + (2 * case.z_loss / len(lse)) * lse.detach() if case.z_loss else b
    p = logits.detach().softmax(-1)
    N = logits.shape[1]
    onehot = torch.nn.functional.one_hot(safe, N).to(p.dtype) * valid[:, None]
    shares = (1 - case.label_smoothing) * onehot + case.label_smoothing / N * valid[:, None].to(p.dtype)
    return HeadResult(loss.detach(), lse.detach(), h.grad, e.grad, logits.detach(), logits.grad,
                      a.abs()[:, None] * p * (1 - p), a.abs()[:, None] * p + b.abs()[:, None] * shares)


def gradient_magnitudes(case: HeadCase, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query row and per item row, the size the gradient would have if no
    term cancelled: sum_j |g_ij| ||v_j|| through the row's Jacobian, and
    sum_i |g_ij| ||u_i|| through the item's (g: |dL/dz|, or its terms). A
    rounding of relative size u in any term moves the gradient by at most u
    times this."""
    h, e = case.hidden.double(), case.items.double()
    h_norm = torch.linalg.vector_norm(h, dim=1).clamp_min(1e-12)
    e_norm = torch.linalg.vector_norm(e, dim=1).clamp_min(1e-12)
    u = (torch.ones_like(h_norm) if case.normalize_hidden else h_norm) / case.temperature
    v = torch.ones_like(e_norm) if case.normalize_items else e_norm
    dh = (g @ v) * ((1.0 / h_norm) if case.normalize_hidden else 1.0) / case.temperature
    de = (g.T @ u) * ((1.0 / e_norm) if case.normalize_items else 1.0)
    return dh, de


def row_errors(got: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-row (or per-element for 1-D) absolute error in fp64."""
    diff = (got.detach().double().cpu() - ref.detach().double().cpu())
    return diff.abs() if diff.dim() == 1 else torch.linalg.vector_norm(diff, dim=1)


def within(kernel_err: torch.Tensor, torch_err: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
    """The budget, elementwise: three times torch's own error in the same dtype,
    plus the rounding floor."""
    return kernel_err <= 3.0 * torch_err + floor
