"""Backbones: shapes, masking, item initialization, loss going down."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tfllmer_fast.app.models import MODELS, build_model, left_pad
from tfllmer_fast.app.models.bert4rec import MASK

NUM_ITEMS = 40


def _sequences(n=12, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, NUM_ITEMS + 1, size=rng.integers(2, 20)) for _ in range(n)]


def test_left_pad():
    out = left_pad([np.array([1, 2, 3]), np.array([4, 5, 6, 7, 8]), np.array([], dtype=np.int64)], 4)
    assert out.tolist() == [[0, 1, 2, 3], [5, 6, 7, 8], [0, 0, 0, 0]]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_shapes_and_shared_table(name):
    model = build_model(name, NUM_ITEMS, dim=16, max_len=10)
    rng = np.random.default_rng(0)
    inputs, targets = model.make_batch(_sequences(), rng)
    assert inputs.shape == targets.shape == (12, 10)
    assert model.encode(inputs).shape == (12, 10, 16)
    assert model.predict_hidden(_sequences(), "cpu").shape == (12, 16)
    assert model.item_table is model.head.weight and model.item_table.shape == (NUM_ITEMS + 1, 16)
    assert torch.isfinite(model.loss(inputs, targets))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_training_steps_lower_the_loss(name):
    torch.manual_seed(0)
    model = build_model(name, NUM_ITEMS, dim=16, max_len=10, temperature=0.1)
    model.eval()  # no dropout: the comparison is about the parameters only
    rng = np.random.default_rng(0)
    seqs = _sequences()
    inputs, targets = model.make_batch(seqs, rng)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = model.loss(inputs, targets).item()
    for _ in range(30):
        opt.zero_grad()
        model.loss(inputs, targets).backward()
        opt.step()
    assert model.loss(inputs, targets).item() < 0.7 * before


def test_next_item_targets_and_last_option():
    model = build_model("sasrec", NUM_ITEMS, dim=8, max_len=4, loss_on="last")
    inputs, targets = model.make_batch([np.array([1, 2, 3])], np.random.default_rng(0))
    assert inputs.tolist() == [[0, 0, 1, 2]] and targets.tolist() == [[0, 0, 0, 3]]


def test_bert4rec_cloze_batch():
    model = build_model("bert4rec", NUM_ITEMS, dim=8, max_len=6)
    inputs, targets = model.make_batch([np.array([1, 2, 3, 4])], np.random.default_rng(0))
    masked = inputs == MASK
    assert masked.any()
    assert (targets[masked] > 0).all() and (targets[~masked] == 0).all()
    assert model.prediction_input([np.array([5, 6])]).tolist() == [[0, 0, 0, 5, 6, MASK]]


def test_sasrec_is_causal():
    torch.manual_seed(0)
    model = build_model("sasrec", NUM_ITEMS, dim=16, max_len=6).eval()
    a = torch.tensor([[0, 1, 2, 3, 4, 5]])
    b = torch.tensor([[0, 1, 2, 3, 9, 9]])
    assert torch.allclose(model.encode(a)[:, :4], model.encode(b)[:, :4], atol=1e-6)


def test_init_items_and_freeze():
    model = build_model("gru4rec", NUM_ITEMS, dim=8, max_len=5)
    init = np.random.default_rng(0).normal(size=(NUM_ITEMS, 8))
    model.init_items(init, freeze=True)
    rows = model.item_table[1:].detach().numpy()
    np.testing.assert_allclose(rows, init / np.linalg.norm(init, axis=1, keepdims=True), rtol=1e-5)
    assert not model.item_table.requires_grad and (model.item_table[0] == 0).all()
    with pytest.raises(ValueError, match="expected \\(40, 8\\)"):
        model.init_items(init[:, :4])


@pytest.mark.parametrize("name", ["sasrec", "bert4rec"])
def test_attention_ignores_leading_padding(name):
    torch.manual_seed(0)
    model = build_model(name, NUM_ITEMS, dim=16, max_len=8).eval()
    short = torch.tensor([[3, 1, 4, 1, 5]])
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), short], dim=1)
    torch.testing.assert_close(model.encode(padded)[:, 3:], model.encode(short), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_loss_is_the_head_mean_over_non_padding_targets(name):
    torch.manual_seed(0)
    model = build_model(name, NUM_ITEMS, dim=16, max_len=10).eval()
    inputs, targets = model.make_batch(_sequences(), np.random.default_rng(0))
    full = torch.nn.functional.cross_entropy(model.head.scores(model.encode(inputs)).flatten(0, 1),
                                             targets.flatten(), ignore_index=0)
    torch.testing.assert_close(model.loss(inputs, targets), full, atol=1e-5, rtol=1e-5)
