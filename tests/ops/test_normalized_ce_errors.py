"""Bad input to normalized_softmax_ce: each error names the argument."""

from __future__ import annotations

import pytest
import torch

import tfllmer_fast as tf
from tests.ops.normalized_ce_cases import make_inputs


@pytest.fixture
def inputs(device):
    return make_inputs(8, 40, 16, torch.float32, device)


@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("bad", [40, 1000, -1, -101])
def test_out_of_range_targets_raise(inputs, impl, bad):
    hidden, items, targets = inputs
    targets[5] = bad
    with pytest.raises(ValueError, match=rf"targets\[5\] = {bad} is out of range"):
        tf.normalized_softmax_ce(hidden, items, targets, impl=impl)


def test_custom_ignore_index_is_accepted(inputs):
    hidden, items, targets = inputs
    targets[0] = -1
    loss = tf.normalized_softmax_ce(hidden, items, targets, ignore_index=-1, reduction="none", impl="triton")
    assert loss[0] == 0


@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("which", ["hidden", "item_emb"])
def test_non_finite_inputs_raise_when_checked(inputs, impl, which):
    hidden, items, targets = inputs
    (hidden if which == "hidden" else items)[2, 3] = float("nan")
    with pytest.raises(ValueError, match=f"{which} contains NaN or Inf"):
        tf.normalized_softmax_ce(hidden, items, targets, impl=impl, check_inputs=True)


def test_nan_inputs_are_never_silent(inputs):
    hidden, items, targets = inputs
    hidden[2, 3] = float("inf")
    loss = tf.normalized_softmax_ce(hidden, items, targets, impl="triton", reduction="none")
    assert torch.isnan(loss[2]) or torch.isinf(loss[2])


@pytest.mark.parametrize(
    "mutate, error, message",
    [
        (lambda h, e, t: (h.long(), e, t), TypeError, "hidden must have dtype"),
        (lambda h, e, t: (h, e.long(), t), TypeError, "item_emb must have dtype"),
        (lambda h, e, t: (h, e, t.float()), TypeError, "targets must be an integer tensor"),
        (lambda h, e, t: (h, e[:, :8], t), ValueError, "hidden has last dimension 16 but item_emb rows have 8"),
        (lambda h, e, t: (h, e, t[:5]), ValueError, r"targets has shape \(5,\), expected \(8,\)"),
        (lambda h, e, t: (h, e[None], t), ValueError, "item_emb must be 2-D"),
        (lambda h, e, t: (h, e[:0], t), ValueError, "item_emb has no rows"),
        (lambda h, e, t: (h.bfloat16(), e, t), TypeError, "hidden is torch.bfloat16 but item_emb is torch.float32"),
        (lambda h, e, t: (h.numpy(), e, t), TypeError, "hidden must be a torch.Tensor"),
    ],
)
def test_bad_arguments(inputs, mutate, error, message):
    hidden, items, targets = mutate(*inputs)
    with pytest.raises(error, match=message):
        tf.normalized_softmax_ce(hidden, items, targets)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"reduction": "avg"}, "reduction must be one of"),
        ({"label_smoothing": 1.5}, "label_smoothing must lie in"),
        ({"temperature": 0.0}, "temperature must be a positive"),
        ({"eps": 0.0}, "eps must be positive"),
        ({"impl": "cuda"}, "impl must be one of"),
        ({"weight": torch.ones(3)}, r"weight has shape \(3,\), expected \(8,\)"),
    ],
)
def test_bad_options(inputs, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tf.normalized_softmax_ce(*inputs, **kwargs)


def test_fp64_needs_the_torch_impl(inputs):
    hidden, items, targets = inputs
    with pytest.raises(TypeError, match="impl='triton' supports fp32, fp16 and bf16"):
        tf.normalized_softmax_ce(hidden.double(), items.double(), targets, impl="triton")


def test_triton_on_cpu_without_interpreter_says_why(monkeypatch):
    hidden, items, targets = make_inputs(8, 40, 16, torch.float32, "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="impl='triton' needs CUDA tensors"):
        tf.normalized_softmax_ce(hidden, items, targets, impl="triton")


@pytest.mark.gpu
def test_device_mismatch_names_arguments():
    hidden, items, targets = make_inputs(8, 40, 16, torch.float32, "cuda")
    with pytest.raises(ValueError, match="item_emb is on cpu but hidden is on cuda"):
        tf.normalized_softmax_ce(hidden, items.cpu(), targets)


@pytest.mark.gpu
def test_cuda_out_of_range_target_poisons_row_without_sync():
    hidden, items, targets = make_inputs(8, 40, 16, torch.float32, "cuda")
    targets[5] = 40
    loss = tf.normalized_softmax_ce(hidden, items, targets, reduction="none")
    assert torch.isnan(loss[5]) and torch.isfinite(loss[:5]).all()
    with pytest.raises(ValueError, match=r"targets\[5\] = 40 is out of range"):
        tf.normalized_softmax_ce(hidden, items, targets, check_inputs=True)
