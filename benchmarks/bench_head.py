"""Forward + backward of the normalized softmax CE head.

GPU tier: B = 12,800 (batch 256 x length 50), bf16, N at Yelp (128,727) and
Sports (201,957) scale with d in {64, 256}, plus 1M and 2M items. Baselines in
the same run: plain torch, torch.compile of the plain-torch reference, and
cut-cross-entropy / Liger-Kernel when installed (``pip install .[bench]``).
TFLOP/s counts the 6 B N d flops of the unfused math for every row, so the
column compares like with like. A row that runs out of memory skips and says so.

CPU rows: the CPU path (``impl="torch_grad_in_forward"``, gradients finished in the forward)
against plain torch at the demo's head shape (B = 1,024, N = 50,000) and a
Beauty training batch (B = 1,600 rows, N = 12,102), d = 64, fp32, with ms and
peak extra memory (the resident-set peak). CPU tier: tiny shapes so CI
exercises the Triton path under the interpreter; no timing claims.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tfllmer_fast import normalized_softmax_ce
from tfllmer_fast.reference import plain_normalized_ce

from .common import GPU, NO_GPU_REASON, head_inputs, run_benchmark

TEMPERATURE = 0.05
GPU_SHAPES = [
    (12_800, 128_727, 64),
    (12_800, 201_957, 64),
    (12_800, 128_727, 256),
    (12_800, 201_957, 256),
    (12_800, 1_000_000, 64),
    (12_800, 2_000_000, 64),
]
CPU_SHAPES = [(64, 1_000, 32)]
CPU_TIMED_SHAPES = [(1024, 50_000, 64), (1600, 12_102, 64)]


def _fused(h, e, t):
    return normalized_softmax_ce(h, e, t, temperature=TEMPERATURE, impl="triton")


def _torch_grad_in_forward(h, e, t, temperature=TEMPERATURE):
    return normalized_softmax_ce(h, e, t, temperature=temperature, impl="torch_grad_in_forward")


def _plain(h, e, t, temperature=TEMPERATURE):
    return plain_normalized_ce(h, e, t, temperature=temperature)


_compiled_reference = None


def _compiled_torch_reference(h, e, t):
    global _compiled_reference
    if _compiled_reference is None:
        _compiled_reference = torch.compile(
            lambda h, e, t: normalized_softmax_ce(h, e, t, temperature=TEMPERATURE, impl="torch")
        )
    return _compiled_reference(h, e, t)


def _cce(h, e, t):
    from cut_cross_entropy import linear_cross_entropy

    return linear_cross_entropy(h / TEMPERATURE, F.normalize(e, dim=-1), t)


def _liger(h, e, t):
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    return liger_fused_linear_cross_entropy(h / TEMPERATURE, F.normalize(e, dim=-1), t)


IMPLS = {
    "fused": (_fused, None),
    "torch_grad_in_forward": (_torch_grad_in_forward, None),
    "plain_torch": (_plain, None),
    "compiled_torch_reference": (_compiled_torch_reference, None),
    "cut_cross_entropy": (_cce, "cut_cross_entropy"),
    "liger": (_liger, "liger_kernel"),
}


def _step(fn, hidden, items, targets):
    hidden.grad = None
    items.grad = None
    fn(hidden, items, targets).backward()


def _bench(benchmark, impl, shape, device, dtype, rounds, fn=None, label=""):
    default_fn, module = IMPLS[impl]
    fn = fn or default_fn
    if module is not None:
        pytest.importorskip(module, reason=f"{module} is not installed (pip install .[bench])")
    B, N, D = shape
    hidden, items, targets = head_inputs(B, N, D, dtype, device)
    hidden.requires_grad_()
    items.requires_grad_()
    benchmark.group = f"head B={B} N={N} d={D} {str(dtype).replace('torch.', '')} {label}".rstrip()
    benchmark.extra_info.update(impl=impl, B=B, N=N, d=D)
    grad_bytes = (B + N) * D * hidden.element_size()
    try:
        run_benchmark(
            benchmark, lambda: _step(fn, hidden, items, targets), device,
            rounds=rounds, flops=6.0 * B * N * D, extra_bytes_ignored=grad_bytes,
        )
    except torch.cuda.OutOfMemoryError:
        hidden.grad = items.grad = None
        torch.cuda.empty_cache()
        pytest.skip(f"{impl} ran out of GPU memory at B={B} N={N} d={D}")


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason=NO_GPU_REASON)
@pytest.mark.parametrize("impl", [name for name in IMPLS if name != "torch_grad_in_forward"])
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: f"B{s[0]}-N{s[1]}-d{s[2]}")
def test_head_gpu(benchmark, impl, shape):
    _bench(benchmark, impl, shape, "cuda", torch.bfloat16, rounds=10)


@pytest.mark.parametrize("impl", ["torch_grad_in_forward", "plain_torch"])
@pytest.mark.parametrize("temperature", [1.0, TEMPERATURE], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("shape", CPU_TIMED_SHAPES, ids=lambda s: f"B{s[0]}-N{s[1]}-d{s[2]}")
def test_head_cpu(benchmark, impl, temperature, shape):
    fn = IMPLS[impl][0]
    _bench(benchmark, impl, shape, "cpu", torch.float32, rounds=5,
           fn=lambda h, e, t: fn(h, e, t, temperature=temperature), label=f"T={temperature}")


@pytest.mark.parametrize("impl", ["fused", "plain_torch"])
@pytest.mark.parametrize("shape", CPU_SHAPES, ids=lambda s: f"B{s[0]}-N{s[1]}-d{s[2]}")
def test_head_cpu_tier(benchmark, impl, shape):
    _bench(benchmark, impl, shape, "cpu", torch.float32, rounds=1)


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason=NO_GPU_REASON)
@pytest.mark.parametrize("impl", list(IMPLS))
def test_head_gradient_error(benchmark, impl):
    """Relative error of loss, dH and dE in bf16 against fp64, B=2048, N=20,000, d=64."""
    _gradient_error(benchmark, impl, "cuda", (2048, 20_000, 64), torch.bfloat16)


def test_head_gradient_error_cpu_tier(benchmark):
    _gradient_error(benchmark, "fused", "cpu", (64, 500, 32), torch.bfloat16)


def _gradient_error(benchmark, impl, device, shape, dtype):
    fn, module = IMPLS[impl]
    if module is not None:
        pytest.importorskip(module, reason=f"{module} is not installed (pip install .[bench])")
    B, N, D = shape
    hidden, items, targets = head_inputs(B, N, D, dtype, device)

    def grads(h, e, f):
        h = h.detach().requires_grad_()
        e = e.detach().requires_grad_()
        loss = f(h, e, targets)
        loss.backward()
        return loss.detach().double(), h.grad.double(), e.grad.double()

    ref = grads(hidden.double(), items.double(), lambda h, e, t: normalized_softmax_ce(
        h, e, t, temperature=TEMPERATURE, impl="torch"))
    benchmark.group = f"head gradient error vs fp64 B={B} N={N} d={D}"
    got = benchmark.pedantic(lambda: grads(hidden, items, fn), rounds=1, iterations=1)
    for name, g, r in zip(("loss", "dH", "dE"), got, ref):
        benchmark.extra_info[f"rel_err_{name}"] = float((g - r).norm() / r.norm())
    benchmark.extra_info.update(impl=impl, device=str(device))
    assert benchmark.extra_info["rel_err_dE"] < 0.05
