"""Property tests of ``normalized_softmax_ce`` (fused path under the interpreter).

Hypothesis draws shapes (B = 1, sizes off every tile, N below one tile, d in
{16, 32, 48, 64, 128}), dtypes (autocast with fp32 queries included), the
layout and storage offset of every tensor argument (queries, items, targets,
per-row weights; int32 and int64 ids), options, and the hard inputs: zero and
tiny rows on either side, duplicated items, planted confident targets,
temperatures down to 0.01. Each example is compared with the fp64 dense head
per row and per item (loss, lse, dH, dE) within three times the same-dtype
torch path's error plus a rounding floor, and every input and output buffer
sits between canaries. Examples are derandomized, so CI sees the same ones on
every run; ``-m slow`` runs a larger budget.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tfllmer_fast as tf
from tests.ops.dense_head import (FP32_ROUNDOFF, LOGIT_ROUNDOFF, OPERAND_ROUNDOFF, HeadCase, dense, gradient_magnitudes, objective, row_errors,
                                  within)
from tests.ops.layouts import MATRIX_LAYOUTS, VECTOR_LAYOUTS, place
from tests.ops.property_runs import DEVICE, SETTINGS
from tfllmer_fast.kernels import config



@st.composite
def cases(draw):
    B = draw(st.sampled_from([1, 3, 17, 33]))
    N = draw(st.sampled_from([1, 5, 31, 33, 70]))
    d = draw(st.sampled_from([16, 32, 48, 64, 128]))
    mode = draw(st.sampled_from(["fp32", "bf16", "fp16", "autocast"]))
    normalize_items, normalize_hidden = draw(st.booleans()), draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, d, generator=g)
    items = torch.randn(N, d, generator=g)
    targets = torch.randint(0, N, (B,), generator=g)
    hard = draw(st.sets(st.sampled_from(["zero_query", "tiny_query", "zero_item", "duplicate_items", "confident",
                                         "ignored"]), max_size=3))
    if mode == "fp16":
        # A zero row's gradient is dv / eps (F.normalize's eps path), past fp16's range.
        hard -= {"zero_item"} if normalize_items else set()
        hard -= {"zero_query"} if normalize_hidden else set()
    if "confident" in hard:
        # The target's row points along the query: p_t close to 1 for small T.
        rows = torch.arange(0, B, 2)
        items[targets[rows]] = hidden[rows] * 2.0
    if "duplicate_items" in hard and N > 1:
        items[torch.randint(0, N, (max(N // 3, 1),), generator=g)] = items[targets[0]].clone()
    if "zero_item" in hard:
        items[targets[-1]] = 0.0
    if "zero_query" in hard:
        hidden[0] = 0.0
    if "tiny_query" in hard:
        hidden[-1] *= 1e-3
    if "ignored" in hard:
        targets[torch.arange(1, B, 3)] = -100
    weight = torch.rand(B, generator=g) + 0.1 if draw(st.booleans()) else None
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "autocast": torch.float32}[mode]
    case = HeadCase(
        hidden=hidden.to(dtype), items=items.to(dtype), targets=targets, weight=weight,
        temperature=draw(st.sampled_from([0.01, 0.07, 0.5, 1.0])),
        normalize_items=normalize_items, normalize_hidden=normalize_hidden,
        label_smoothing=draw(st.sampled_from([0.0, 0.1])), reduction=draw(st.sampled_from(["mean", "sum", "none"])),
        z_loss=draw(st.sampled_from([0.0, 0.01])),
    )
    layouts = dict(
        hidden=(draw(st.sampled_from(MATRIX_LAYOUTS)), draw(st.integers(0, 3))),
        items=(draw(st.sampled_from(MATRIX_LAYOUTS)), draw(st.integers(0, 3))),
        targets=(draw(st.sampled_from(VECTOR_LAYOUTS)), draw(st.integers(0, 3)), draw(st.sampled_from(["64", "32"]))),
        weight=(draw(st.sampled_from(VECTOR_LAYOUTS)), draw(st.integers(0, 3))),
    )
    return case, mode, layouts


def _fused(case: HeadCase, mode: str, layouts: dict):
    """The fused path on the case's values laid out as drawn; the placed inputs come back for their canaries."""
    (h_layout, h_off), (e_layout, e_off) = layouts["hidden"], layouts["items"]
    t_layout, t_off, t_bits = layouts["targets"]
    N = case.items.shape[0]
    placed = {
        "hidden": place(case.hidden.to(DEVICE), h_layout, h_off),
        "items": place(case.items.to(DEVICE), e_layout, e_off),
        "targets": place(case.targets.to(DEVICE, torch.int64 if t_bits == "64" else torch.int32), t_layout, t_off,
                         canary=(N - 1) // 2),
    }
    if case.weight is not None:
        placed["weight"] = place(case.weight.to(DEVICE), *layouts["weight"])
    h = placed["hidden"].view.detach().requires_grad_()
    e = placed["items"].view.detach().requires_grad_()
    with config.guarded_outputs() as outputs, torch.autocast(DEVICE.type, dtype=torch.bfloat16,
                                                              enabled=mode == "autocast"):
        out = tf.normalized_softmax_ce(
            h, e, placed["targets"].view, weight=placed["weight"].view if case.weight is not None else None,
            temperature=case.temperature, normalize_items=case.normalize_items,
            normalize_hidden=case.normalize_hidden, label_smoothing=case.label_smoothing,
            reduction=case.reduction, return_lse=True, impl="triton",
        )
        objective(out.loss, out.lse, case.z_loss).backward()
    outputs.check()
    for name, p in placed.items():
        assert p.untouched(), f"the canaries around {name} changed"
    return out.loss.detach().cpu(), out.lse.detach().cpu(), h.grad.cpu(), e.grad.cpu()


def _check(case: HeadCase, mode: str, layouts: dict) -> dict:
    loss, lse, dh, de = _fused(case, mode, layouts)
    oracle = dense(case, torch.float64)
    plain = dense(case, case.hidden.dtype, autocast=mode == "autocast")
    u = OPERAND_ROUNDOFF[torch.bfloat16 if mode == "autocast" else case.hidden.dtype]
    hn = case.hidden.double()
    en = case.items.double()
    h_size = 1.0 if case.normalize_hidden else torch.linalg.vector_norm(hn, dim=1).max().item()
    e_size = 1.0 if case.normalize_items else torch.linalg.vector_norm(en, dim=1).max().item()
    L = h_size * e_size / case.temperature  # bounds every |logit|
    # A rounding of the operands or of p scales with the gradient; an error of
    # delta in the logits moves G_ij by at most 2 delta |a_i| p_ij (1 - p_ij);
    # and G's terms, before they cancel, each carry an fp32 rounding.
    (G_h, G_e) = gradient_magnitudes(case, oracle.dlogits.abs())
    (S_h, S_e) = gradient_magnitudes(case, oracle.sensitivity)
    (T_h, T_e) = gradient_magnitudes(case, oracle.terms)
    delta = (u + LOGIT_ROUNDOFF) * (1 + L)
    report = {}
    for name, got, ref, torch_path, floor in (
        ("lse", lse, oracle.lse, plain.lse, 4 * delta * torch.ones(len(lse), dtype=torch.float64)),
        ("dH", dh, oracle.dh, plain.dh, 4 * (u * G_h + delta * S_h + FP32_ROUNDOFF * T_h)),
        ("dE", de, oracle.de, plain.de, 4 * (u * G_e + delta * S_e + FP32_ROUNDOFF * T_e)),
    ):
        assert got.shape == ref.shape, name
        assert torch.isfinite(got).all(), f"{name} has non-finite values"
        err, torch_err = row_errors(got, ref), row_errors(torch_path, ref)
        ok = within(err, torch_err, floor + 1e-30)
        bad = (~ok).nonzero().flatten().tolist()
        assert not bad, (f"{mode} {name}: rows {bad[:6]} over budget: error {err[bad[:3]].tolist()} vs torch "
                         f"{torch_err[bad[:3]].tolist()}, floor {floor[bad[:3]].tolist()}, |ref| "
                         f"{ref.double().reshape(len(err), -1).norm(dim=1)[bad[:3]].tolist()}")
        report[name] = err
    # The loss: each row's error is at most two logit roundings (lse and the target's).
    coef = torch.ones(len(case.targets), dtype=torch.float64)
    if case.weight is not None:
        coef = coef * case.weight.double()
    if case.reduction == "mean":
        valid = (case.targets != case.ignore_index).double()
        coef = coef / (valid * coef).sum().clamp_min(1e-30)
    loss_floor = 4 * delta * (coef.abs() if case.reduction == "none" else coef.abs().sum())
    loss_err = row_errors(loss.reshape(-1), oracle.loss.reshape(-1))
    torch_loss_err = row_errors(plain.loss.reshape(-1), oracle.loss.reshape(-1))
    if not bool((case.targets != case.ignore_index).any()) and case.reduction == "mean":
        assert torch.isnan(loss)  # a mean over no rows, as torch gives
    else:
        assert within(loss_err, torch_loss_err, loss_floor + 1e-30).all(), (loss_err, torch_loss_err, loss_floor)
    return report


@settings(max_examples=40, **SETTINGS)
@given(cases())
def test_fused_head_matches_fp64_per_row_any_layout(drawn):
    _check(*drawn)


@pytest.mark.slow
@settings(max_examples=400, **SETTINGS)
@given(cases())
def test_fused_head_matches_fp64_per_row_any_layout_large_budget(drawn):
    _check(*drawn)
