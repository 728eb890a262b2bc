"""torch.compile(fullgraph=True) through the custom ops, with ignored rows."""

from __future__ import annotations

import pytest
import torch

import tfllmer_fast as tf
from tests.ops.normalized_ce_cases import make_inputs, rel_err
from tfllmer_fast.options import HeadOptions, LossOptions


def _eager_and_compiled(step, hidden, items, targets):
    """(loss, dH, dE) of ``step`` run eagerly, then under torch.compile(fullgraph=True)."""
    results = []
    for fn in (step, torch.compile(step, fullgraph=True)):
        h = hidden.clone().requires_grad_()
        e = items.clone().requires_grad_()
        loss = fn(h, e, targets)
        loss.backward()
        results.append((loss.detach(), h.grad, e.grad))
    return results


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_compile_fullgraph_with_ignored_rows(impl, device):
    torch._dynamo.reset()
    hidden, items, targets = make_inputs(24, 70, 16, torch.float32, device, ignore_rows=(0, 5, 6, 23))

    def step(h, e, t):
        out = tf.normalized_softmax_ce(h, e, t, impl=impl, temperature=0.5, label_smoothing=0.1, return_lse=True)
        return out.loss + 1e-3 * out.lse.mean()

    (eager_loss, eager_dh, eager_de), (comp_loss, comp_dh, comp_de) = _eager_and_compiled(step, hidden, items, targets)
    assert rel_err(comp_loss, eager_loss) < 1e-6
    assert rel_err(comp_dh, eager_dh) < 1e-5
    assert rel_err(comp_de, eager_de) < 1e-5


def test_fake_tensor_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        h = torch.empty(12, 16)
        e = torch.empty(50, 16)
        t = torch.zeros(12, dtype=torch.long)
        rows, lse, o, _ = torch.ops.tfllmer_fast.normalized_ce_fwd(
            h, e, t, *HeadOptions(), *LossOptions(), torch.float32, True, False
        )
        grad_e = torch.ops.tfllmer_fast.normalized_ce_item_grad(
            h, e, t, lse, rows, rows, rows, *HeadOptions(), torch.float32
        )
    assert rows.shape == (12,) and lse.shape == (12,) and o.shape == (12, 16)
    assert grad_e.shape == (50, 16)


def test_opcheck():
    hidden, items, targets = make_inputs(8, 40, 16, torch.float32, "cpu")
    torch.library.opcheck(
        torch.ops.tfllmer_fast.normalized_ce_fwd.default,
        (hidden, items, targets, *HeadOptions(), *LossOptions(), torch.float32, True, False),
        test_utils=("test_schema", "test_faketensor"),
    )


def test_op_schemas_follow_the_options():
    """The ops' option arguments are HeadOptions' and LossOptions' fields, in order."""
    head, loss = list(HeadOptions._fields), list(LossOptions._fields)
    for name, start, fields in (("normalized_ce_fwd", 3, head + loss), ("normalized_ce_item_grad", 7, head),
                                ("normalized_ce_grad_in_forward", 4, head + loss), ("target_rank", 5, head), ("topk", 6, head)):
        args = [a.name for a in getattr(torch.ops.tfllmer_fast, name).default._schema.arguments]
        assert args[start : start + len(fields)] == fields, name


def test_compile_fullgraph_grad_in_forward(device):
    """The CPU path (gradients finished in the forward) under torch.compile."""
    torch._dynamo.reset()
    hidden, items, targets = make_inputs(24, 70, 16, torch.float32, device, ignore_rows=(0, 5))

    def step(h, e, t):
        return tf.normalized_softmax_ce(h, e, t, impl="torch_grad_in_forward", temperature=0.5, label_smoothing=0.1, chunk_size=8)

    for eager, compiled in zip(*_eager_and_compiled(step, hidden, items, targets)):
        assert rel_err(compiled, eager) < 1e-5


def test_opcheck_grad_in_forward():
    hidden, items, targets = make_inputs(8, 40, 16, torch.float32, "cpu")
    coef = torch.full((8,), 1 / 8)
    torch.library.opcheck(
        torch.ops.tfllmer_fast.normalized_ce_grad_in_forward.default,
        (hidden, items, targets, coef, *HeadOptions(), *LossOptions(), 4, True, True),
        test_utils=("test_schema", "test_faketensor"),
    )
