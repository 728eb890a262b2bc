"""Every kernel against its reference at the paper's shapes, on a GPU (the
interpreter tests cover small shapes on CPU; these need CUDA and skip
without it). Part of the GPU validation (``python -m benchmarks.gpu_validate``)."""

from __future__ import annotations

import pytest
import torch

import tfllmer_fast as tf
from tests.ops.normalized_ce_cases import budget, make_inputs, oracle, plain_torch_result, rel_err

pytestmark = pytest.mark.gpu

ITEMS = 201_957
# (dtype, torch.set_float32_matmul_precision): the operand kinds the kernels serve.
KINDS = {
    "bf16": (torch.bfloat16, "highest"),
    "fp16": (torch.float16, "highest"),
    "fp32-tf32": (torch.float32, "high"),
    "fp32-highest": (torch.float32, "highest"),
}


@pytest.fixture
def kind(request):
    dtype, precision = KINDS[request.param]
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    yield dtype
    torch.set_float32_matmul_precision(previous)


@pytest.mark.parametrize("kind", list(KINDS), indirect=True)
@pytest.mark.parametrize("dim", [64, 256])
def test_head_at_paper_scale(kind, dim):
    hidden, items, targets = make_inputs(2048, ITEMS, dim, kind, "cuda", ignore_rows=(5,))
    options = dict(temperature=0.05, label_smoothing=0.1)
    h = hidden.clone().requires_grad_()
    e = items.clone().requires_grad_()
    out = tf.normalized_softmax_ce(h, e, targets, impl="triton", return_lse=True, **options)
    out.loss.backward()
    got = (out.loss.detach(), out.lse.detach(), h.grad, e.grad)
    ref = oracle(hidden, items, targets, **options)
    plain = plain_torch_result(hidden, items, targets, **options)
    for name, g, r, p in zip(("loss", "lse", "dH", "dE"), got, ref, plain):
        floor = 1.0 if name in ("loss", "lse") else 1e-30
        err, torch_err = rel_err(g, r, floor), rel_err(p, r, floor)
        assert err <= budget(torch_err), f"{name}: error {err:.3g} vs torch {torch_err:.3g}"


def _fp64_scores(hidden, items):
    e = torch.nn.functional.normalize(items.double(), dim=-1)
    return hidden.double() @ e.T


@pytest.mark.parametrize("kind", ["bf16", "fp32-tf32", "fp32-highest"], indirect=True)
def test_target_rank_at_paper_scale(kind):
    hidden, items, targets = make_inputs(1024, ITEMS, 64, kind, "cuda")
    ranks = tf.target_rank(hidden, items, targets, impl="triton")
    scores = _fp64_scores(hidden, items)
    target = scores.gather(1, targets[:, None])
    scores.scatter_(1, targets[:, None], float("-inf"))
    tol = 1e-4 * target.abs().clamp_min(1.0)  # fp32 accumulation of d products
    low = 1 + (scores > target + tol).sum(1)
    high = 1 + (scores >= target - tol).sum(1)
    assert ((ranks >= low) & (ranks <= high)).all()


@pytest.mark.parametrize("kind", ["bf16", "fp32-highest"], indirect=True)
@pytest.mark.parametrize("k", [10, 100, 500])
def test_topk_at_paper_scale(kind, k):
    hidden, items, _ = make_inputs(1024, ITEMS, 64, kind, "cuda")
    seen = torch.randint(0, ITEMS, (1024, 20), device="cuda")
    exclude = (torch.arange(0, 1025 * 20, 20, device="cuda")[:1025], seen.flatten())
    top = tf.topk_scores(hidden, items, k, exclude=exclude, impl="triton")
    scores = _fp64_scores(hidden, items)
    scores.scatter_(1, seen, float("-inf"))
    kth = scores.topk(k, dim=1).values[:, -1:]
    picked = scores.gather(1, top.indices)
    assert (top.indices >= 0).all()
    assert not (top.indices[:, :, None] == seen[:, None, :]).any()  # no excluded item
    assert (top.indices.sort(1).values.diff(dim=1) > 0).all()  # distinct
    assert (picked >= kth - 1e-4).all()  # each within rounding of the true k best
    assert (top.values.diff(dim=1) <= 0).all()  # sorted
