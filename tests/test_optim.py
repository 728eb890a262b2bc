"""ItemwiseSAM: radii by hand, SAM's update by hand, item-wise perturbation through the fused head's row weights."""

from __future__ import annotations

import pytest
import torch

from tfllmer_fast import normalized_softmax_ce
from tfllmer_fast.app.optim import ItemwiseSAM, item_radius_scales


def test_radius_scales_by_hand():
    # (c + 1)^-1 = [1, 1/4, 1/2]; mean over the 4 training targets (3 x item 1, 1 x item 2) = 5/16
    assert item_radius_scales([0, 3, 1], 1.0).tolist() == pytest.approx([3.2, 0.8, 1.6])
    assert item_radius_scales([0, 3, 1], 0.0).tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="exponent"):
        item_radius_scales([1, 2], -1.0)
    with pytest.raises(ValueError, match="positive total"):
        item_radius_scales([0, 0], 0.5)


def _problem(seed=0):
    torch.manual_seed(seed)
    hidden = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    table = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([1, 1, 1, 2, 5, 8])
    return hidden, table, targets


def _loss(hidden, table, targets, weight=None):
    return normalized_softmax_ce(hidden, table, targets, row_weight=weight, impl="torch")


def _manual_sam_step(hidden, table, targets, rho, lr, weight):
    """SAM by hand: eps from the (weighted) gradient at w, plain gradient at w + eps, SGD step from w."""
    params = [hidden, table]
    grads = torch.autograd.grad(_loss(hidden, table, targets, weight), params)
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    moved = [(p + rho * g / norm).detach().requires_grad_() for p, g in zip(params, grads)]
    second = torch.autograd.grad(_loss(*moved, targets), moved)
    return [(p - lr * g).detach() for p, g in zip(params, second)]


@pytest.mark.parametrize("exponent", [None, 0.0, 1.0])
def test_step_is_sam_with_the_item_weighted_first_gradient(exponent):
    hidden, table, targets = _problem()
    counts = torch.tensor([0, 30, 5, 0, 0, 2, 0, 0, 1])
    scales = None if exponent is None else item_radius_scales(counts, exponent)
    weight = None if scales is None else scales[targets]
    expected = _manual_sam_step(hidden, table, targets, rho=0.1, lr=0.05, weight=weight)

    sam = ItemwiseSAM(torch.optim.SGD([hidden, table], lr=0.05), rho=0.1, scales=scales)

    def closure(row_weight=None):
        sam.zero_grad()
        loss = _loss(hidden, table, targets, None if row_weight is None else row_weight(targets))
        loss.backward()
        return loss

    loss = sam.step(closure)
    assert torch.allclose(hidden, expected[0], atol=1e-12) and torch.allclose(table, expected[1], atol=1e-12)
    assert torch.isfinite(loss)
    if exponent == 1.0:  # the item-wise direction differs from plain SAM's
        plain = _manual_sam_step(*_problem()[:2], targets, rho=0.1, lr=0.05, weight=None)
        assert not torch.allclose(expected[1], plain[1])


def test_trainer_runs_itemwise_sam_and_resumes_exactly(tmp_path):
    from tfllmer_fast.app.data import leave_one_out
    from tfllmer_fast.app.synthetic import planted_dataset
    from tfllmer_fast.app.config import TrainConfig
    from tfllmer_fast.app.train import Trainer

    data, _ = planted_dataset(num_users=60, num_items=30, clusters=3, max_len=8, seed=4)
    split = leave_one_out(data)

    def config(epochs, sam="itemwise"):
        return TrainConfig(dim=8, max_len=8, batch_size=16, epochs=epochs, patience=10, diagnostics_sample=0,
                           sam=sam, sam_rho=0.05)

    full = Trainer(split, config(3))
    full.fit()
    Trainer(split, config(1), out_dir=tmp_path).fit()
    resumed = Trainer(split, config(3), out_dir=tmp_path)
    resumed.load_checkpoint(tmp_path / "checkpoint.pt")  # the wrapped Adam's moments come back too
    resumed.fit()
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    plain = Trainer(split, config(3, sam="off"))
    plain.fit()
    assert not torch.equal(plain.model.item_table, full.model.item_table)  # SAM changed the steps


def test_bad_rho_is_named():
    with pytest.raises(ValueError, match="rho"):
        ItemwiseSAM(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), rho=-1.0)
