"""normalized_softmax_ce against the fp64 plain-torch expression.

Each kernel error (forward, dH, dE) must stay within a small multiple of the
error torch itself makes in the same dtype (see ``budget``). Shapes are small
so the Triton kernels run under the CPU interpreter; the interpreter configs use
32-item and 16-row blocks, so N = 33 / 65 / 301 and B = 17 / 37 cross block and
split boundaries.
"""

from __future__ import annotations

import pytest
import torch

import tfllmer_fast as tf
from tests.ops.normalized_ce_cases import budget, logit_scale, make_inputs, oracle, plain_torch_result, rel_err

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
OPTION_SETS = {
    "default": {},
    "temperature": {"temperature": 0.07},
    "label_smoothing": {"label_smoothing": 0.2},
    "normalize_hidden": {"normalize_hidden": True, "temperature": 0.5},
    "no_normalization": {"normalize_items": False},
    "sum": {"reduction": "sum"},
    "none": {"reduction": "none"},
    "all_options": {"normalize_hidden": True, "temperature": 0.2, "label_smoothing": 0.1, "reduction": "sum"},
}


def _run(impl, hidden, items, targets, **options):
    h = hidden.detach().clone().requires_grad_()
    e = items.detach().clone().requires_grad_()
    out = tf.normalized_softmax_ce(h, e, targets, impl=impl, return_lse=True, **options)
    out.loss.sum().backward()
    return out.loss.detach(), out.lse.detach(), h.grad, e.grad


def _assert_within_budget(hidden, items, targets, impl="triton", **options):
    got = _run(impl, hidden, items, targets, **options)
    ref = oracle(hidden, items, targets, **options)
    plain = plain_torch_result(hidden, items, targets, **options)
    scale = logit_scale(hidden, items, **options)
    for name, g, r, p in zip(("loss", "lse", "dH", "dE"), got, ref, plain):
        assert torch.isfinite(g).all(), f"{name} has non-finite values"
        floor = 1.0 if name in ("loss", "lse") else 1e-30
        err, torch_err = rel_err(g, r, floor), rel_err(p, r, floor)
        assert err <= budget(torch_err, scale), f"{name}: error {err:.3g} vs torch {torch_err:.3g}"
    return got


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("options", OPTION_SETS.values(), ids=OPTION_SETS.keys())
def test_matches_fp64_reference(options, dtype, device):
    hidden, items, targets = make_inputs(37, 301, 24, dtype, device, ignore_rows=(3, 20))
    _assert_within_budget(hidden, items, targets, **options)


@pytest.mark.parametrize("impl", ["triton", "torch_grad_in_forward", "torch"])
@pytest.mark.parametrize("B,N,D", [(17, 33, 16), (16, 32, 8), (37, 65, 40), (5, 300, 64)])
def test_odd_sizes(B, N, D, impl, device):
    hidden, items, targets = make_inputs(B, N, D, torch.float32, device)
    _assert_within_budget(hidden, items, targets, impl=impl)


@pytest.mark.parametrize("impl", ["triton", "torch_grad_in_forward", "torch"])
def test_single_item(impl, device):
    """One item: p = 1, so loss and gradients are exactly 0. A relative error
    means nothing there; fp32 "highest" runs 3-pass TF32 on the GPU (and its
    emulation under the interpreter), whose products carry ~2^-21 relative
    error, so the bound is absolute, a few such roundings of O(1) inputs."""
    hidden, items, targets = make_inputs(3, 1, 16, torch.float32, device)
    loss, _, dh, de = _run(impl, hidden, items, targets)
    for name, value in (("loss", loss), ("dH", dh), ("dE", de)):
        assert value.abs().max() <= 1e-6, f"{name}: {value.abs().max():.3g}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("options", [o for o in OPTION_SETS.values() if o.get("reduction") != "none"],
                         ids=[k for k, o in OPTION_SETS.items() if o.get("reduction") != "none"])
def test_chunked_matches_fp64_reference(options, dtype, device):
    """The CPU path: gradients finished in the forward, 16-row chunks so 37 rows
    cross chunk boundaries, ignored rows, weights."""
    hidden, items, targets = make_inputs(37, 301, 24, dtype, device, ignore_rows=(3, 20))
    weight = torch.rand(37, device=device)
    _assert_within_budget(hidden, items, targets, impl="torch_grad_in_forward", chunk_size=16, weight=weight, **options)


def _graph_ops(tensor) -> set[str]:
    seen, stack = set(), [tensor.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is not None and type(fn).__name__ not in seen:
            seen.add(type(fn).__name__)
            stack.extend(f for f, _ in fn.next_functions)
    return seen


def test_auto_on_cpu_takes_the_chunked_path_for_reduced_losses():
    hidden, items, targets = make_inputs(8, 50, 16, torch.float32, "cpu")
    h = hidden.requires_grad_()
    reduced = " ".join(_graph_ops(tf.normalized_softmax_ce(h, items, targets)))
    per_row = " ".join(_graph_ops(tf.normalized_softmax_ce(h, items, targets, reduction="none")))
    assert "normalized_ce_grad_in_forward" in reduced and "normalized_ce_grad_in_forward" not in per_row


def test_chunked_refuses_gradients_through_lse_or_rows():
    """It finished the reduced loss's gradient in the forward: a gradient
    through the lse or the per-row losses would be silently dropped, so it raises."""
    hidden, items, targets = make_inputs(8, 50, 16, torch.float32, "cpu")
    h = hidden.requires_grad_()
    out = tf.normalized_softmax_ce(h, items, targets, impl="torch_grad_in_forward", return_lse=True)
    with pytest.raises(RuntimeError, match="impl='torch_grad_in_forward' finishes the gradient in the forward"):
        (out.loss + out.lse.sum()).backward()
    rows = tf.normalized_softmax_ce(h, items, targets, impl="torch_grad_in_forward", reduction="none")
    with pytest.raises(RuntimeError, match="impl='torch_grad_in_forward' finishes the gradient in the forward"):
        rows.sum().backward()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_peaked_softmax(dtype, device):
    hidden, items, targets = make_inputs(37, 301, 32, dtype, device, planted=20)
    loss, *_ = _assert_within_budget(hidden, items, targets, temperature=0.05, reduction="none")
    assert loss[:20].max() < 0.1  # the planted targets take almost all the mass: really peaked


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_flat_softmax(dtype, device):
    hidden, items, targets = make_inputs(37, 301, 32, dtype, device, scale=1e-3)
    loss, *_ = _assert_within_budget(hidden, items, targets, normalize_items=False)
    assert abs(loss.item() - torch.log(torch.tensor(301.0)).item()) < 1e-2


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_weights(dtype, device):
    hidden, items, targets = make_inputs(37, 100, 16, dtype, device, ignore_rows=(0,))
    weight = torch.rand(37, device=device)
    for reduction in ("mean", "sum", "none"):
        _assert_within_budget(hidden, items, targets, weight=weight, reduction=reduction)


@pytest.mark.parametrize("impl", ["triton", "torch_grad_in_forward"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_zero_norm_item_rows_take_eps_path(dtype, impl, device):
    hidden, items, targets = make_inputs(37, 100, 16, dtype, device, zero_items=(0, 50))
    targets[:3] = 0  # the padding row as a target too
    got = _run(impl, hidden, items, targets)
    ref = oracle(hidden, items, targets)
    for g in got:
        assert not torch.isnan(g).any()
    assert rel_err(got[0], ref[0]) < 1e-2
    # The zero rows' gradient is dv / eps, as F.normalize defines it.
    assert rel_err(got[3][[0, 50]], ref[3][[0, 50]]) < 2e-2
    keep = torch.ones(100, dtype=torch.bool)
    keep[[0, 50]] = False
    plain = plain_torch_result(hidden, items, targets)
    assert rel_err(got[3][keep], ref[3][keep]) <= budget(rel_err(plain[3][keep], ref[3][keep]))


def test_ignored_rows_get_zero_loss_and_gradient(device):
    hidden, items, targets = make_inputs(20, 64, 16, torch.float32, device, ignore_rows=range(0, 20, 2))
    loss, _, dh, _ = _run("triton", hidden, items, targets, reduction="none")
    assert (loss[0::2] == 0).all() and (loss[1::2] > 0).all()
    assert (dh[0::2] == 0).all()


def test_all_rows_ignored_mean_is_nan_like_torch(device):
    hidden, items, targets = make_inputs(4, 64, 16, torch.float32, device, ignore_rows=range(4))
    for impl in ("triton", "torch"):
        assert torch.isnan(tf.normalized_softmax_ce(hidden, items, targets, impl=impl))
        assert tf.normalized_softmax_ce(hidden, items, targets, impl=impl, reduction="sum") == 0


def test_lse_gradient_z_loss(device):
    """The returned lse is differentiable (z-loss regularization)."""
    hidden, items, targets = make_inputs(37, 150, 16, torch.float32, device, ignore_rows=(1,))
    results = []
    for impl in ("triton", "torch"):
        h = hidden.double() if impl == "torch" else hidden.clone()
        e = items.double() if impl == "torch" else items.clone()
        h.requires_grad_()
        e.requires_grad_()
        out = tf.normalized_softmax_ce(h, e, targets, impl=impl, return_lse=True)
        (out.loss + 1e-2 * (out.lse**2).mean()).backward()
        results.append((h.grad, e.grad))
    assert rel_err(results[0][0], results[1][0]) < 1e-5
    assert rel_err(results[0][1], results[1][1]) < 1e-5


def test_item_grad_skipped_without_requires_grad(device, monkeypatch):
    from tfllmer_fast import kernels

    def fail(*args, **kwargs):
        raise AssertionError("item gradient kernel launched")

    monkeypatch.setattr(kernels, "normalized_ce_item_grad", fail)
    hidden, items, targets = make_inputs(17, 64, 16, torch.float32, device)
    hidden.requires_grad_()
    tf.normalized_softmax_ce(hidden, items, targets, impl="triton").backward()
    assert hidden.grad is not None and items.grad is None


def test_hidden_grad_not_needed(device):
    hidden, items, targets = make_inputs(17, 64, 16, torch.float32, device)
    items.requires_grad_()
    tf.normalized_softmax_ce(hidden, items, targets, impl="triton").backward()
    ref = oracle(hidden, items, targets)
    assert rel_err(items.grad, ref[3]) < 1e-5


def test_non_contiguous_and_batched_inputs(device):
    hidden, items, targets = make_inputs(24, 90, 16, torch.float32, device)
    h3 = hidden.reshape(4, 6, 16).transpose(0, 1)  # (6, 4, 16), non-contiguous
    t3 = targets.reshape(4, 6).t()
    wide = torch.randn(90, 40, device=device)
    wide[:, ::2] = 0
    wide[:, 1:33:2] = items
    e_view = wide[:, 1:33:2]  # stride 2 along d
    assert not h3.is_contiguous() and not e_view.is_contiguous()
    h3 = h3.detach().requires_grad_()
    e_view = e_view.detach().requires_grad_()
    loss = tf.normalized_softmax_ce(h3, e_view, t3, impl="triton", reduction="none")
    assert loss.shape == (6, 4)
    loss.sum().backward()
    ref = oracle(h3.reshape(-1, 16), e_view, t3.reshape(-1), reduction="none")
    assert rel_err(loss.reshape(-1), ref[0]) < 1e-5
    assert rel_err(h3.grad.reshape(-1, 16), ref[2]) < 1e-5
    assert rel_err(e_view.grad, ref[3]) < 1e-5


def test_sum_reduction_accumulates_exactly(device):
    hidden, items, targets = make_inputs(32, 80, 16, torch.float32, device, ignore_rows=(5,))
    e = items.clone().requires_grad_()
    for part in (slice(0, 13), slice(13, 32)):
        tf.normalized_softmax_ce(hidden[part], e, targets[part], impl="triton", reduction="sum").backward()
    accumulated = e.grad.clone()
    e.grad = None
    tf.normalized_softmax_ce(hidden, e, targets, impl="triton", reduction="sum").backward()
    assert rel_err(accumulated, e.grad) < 1e-6


def test_deterministic(device):
    hidden, items, targets = make_inputs(37, 301, 24, torch.bfloat16, device)
    first = _run("triton", hidden, items, targets)
    second = _run("triton", hidden, items, targets)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_autocast_mixed_precision(device):
    """Under autocast an fp32 table meets the autocast dtype; without it a dtype
    mismatch is an error naming both arguments."""
    hidden, items, targets = make_inputs(17, 64, 16, torch.float32, device)
    with pytest.raises(TypeError, match="hidden is torch.bfloat16 but item_emb is torch.float32"):
        tf.normalized_softmax_ce(hidden.bfloat16(), items, targets, impl="triton")
    e = items.clone().requires_grad_()
    with torch.autocast(device.type, dtype=torch.bfloat16):
        loss = tf.normalized_softmax_ce(hidden.bfloat16(), e, targets, impl="triton")
    loss.backward()
    assert loss.dtype == torch.float32 and e.grad.dtype == torch.float32
    ref = oracle(hidden.bfloat16(), items.bfloat16(), targets)
    assert rel_err(loss, ref[0]) < 1e-2 and rel_err(e.grad, ref[3]) < 2e-2


@pytest.mark.parametrize("chunk_size", [1, 7, 64])
def test_reference_chunking_is_exact(chunk_size, device):
    hidden, items, targets = make_inputs(37, 50, 16, torch.float64, device, ignore_rows=(2,))
    full = _run("torch", hidden, items, targets, chunk_size=1000, label_smoothing=0.1)
    chunked = _run("torch", hidden, items, targets, chunk_size=chunk_size, label_smoothing=0.1)
    for a, b in zip(full, chunked):
        assert rel_err(a, b) < 1e-12


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_reference_equals_cross_entropy_on_dense_logits(smoothing, device):
    import torch.nn.functional as F

    hidden, items, targets = make_inputs(37, 50, 16, torch.float64, device, ignore_rows=(2,))
    h1, e1 = hidden.clone().requires_grad_(), items.clone().requires_grad_()
    logits = F.normalize(h1, dim=-1) @ F.normalize(e1, dim=-1).T / 0.3
    expected = F.cross_entropy(logits, targets, label_smoothing=smoothing)
    expected.backward()
    h2, e2 = hidden.clone().requires_grad_(), items.clone().requires_grad_()
    got = tf.normalized_softmax_ce(
        h2, e2, targets, impl="torch", temperature=0.3, normalize_hidden=True, label_smoothing=smoothing
    )
    got.backward()
    assert torch.allclose(got, expected, rtol=1e-12, atol=0)
    assert torch.allclose(h2.grad, h1.grad, rtol=1e-10, atol=1e-14)
    assert torch.allclose(e2.grad, e1.grad, rtol=1e-10, atol=1e-14)


@pytest.mark.gpu
def test_int64_offsets_beyond_2_31_elements():
    """A (2^25 + 17) x 64 bf16 table has more than 2^31 elements: every pointer
    offset in the kernels must be 64-bit."""
    N, D, B = 2**25 + 17, 64, 16
    gen = torch.Generator(device="cuda").manual_seed(0)
    items = torch.randn(N, D, device="cuda", dtype=torch.bfloat16, generator=gen)
    hidden = torch.randn(B, D, device="cuda", dtype=torch.bfloat16, generator=gen)
    targets = torch.tensor([0, N - 1, N // 2, 2**31 // D + 3] * 4, device="cuda")
    assert items.numel() > 2**31
    e = items.requires_grad_()
    loss = tf.normalized_softmax_ce(hidden, e, targets, impl="triton", reduction="sum")
    loss.backward()
    ref = tf.normalized_softmax_ce(hidden.float(), items.detach().float(), targets, impl="torch", chunk_size=4,
                                   reduction="sum")
    assert rel_err(loss, ref, 1.0) < 1e-3
    # The target rows receive the largest gradients; rows past 2^31 elements included.
    assert e.grad[N - 1].abs().sum() > 0 and e.grad[2**31 // D + 3].abs().sum() > 0
    ranks = tf.target_rank(hidden, items.detach(), targets, impl="triton")
    ref_ranks = tf.target_rank(hidden, items.detach(), targets, impl="torch", chunk_size=4)
    assert (ranks - ref_ranks).abs().max() <= 1


@pytest.mark.parametrize("impl", ["triton", "torch_grad_in_forward", "torch"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_empty_batch_like_torch(impl, reduction, device):
    """No rows: the loss is NaN (mean) or 0 (sum) as F.cross_entropy gives, and
    both inputs get zero gradients, not None."""
    hidden = torch.randn(0, 16, device=device, requires_grad=True)
    items = torch.randn(40, 16, device=device, requires_grad=True)
    targets = torch.zeros(0, dtype=torch.long, device=device)
    loss = tf.normalized_softmax_ce(hidden, items, targets, impl=impl, reduction=reduction)
    assert torch.isnan(loss) if reduction == "mean" else loss == 0
    loss.backward()
    assert hidden.grad.shape == (0, 16)
    assert items.grad is not None and (items.grad == 0).all()
    assert tf.normalized_softmax_ce(hidden, items, targets, impl=impl, reduction="none").shape == (0,)
