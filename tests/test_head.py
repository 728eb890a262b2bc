"""NormalizedSoftmaxHead: the module over normalized_softmax_ce."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tfllmer_fast as tf
from tfllmer_fast.reference import normalized_logits


def test_forward_equals_functional(device):
    head = tf.NormalizedSoftmaxHead(50, 16, temperature=0.3, device=device)
    hidden = torch.randn(4, 6, 16, device=device)
    targets = torch.randint(0, 50, (4, 6), device=device)
    expected = tf.normalized_softmax_ce(hidden, head.weight, targets, temperature=0.3)
    assert torch.allclose(head(hidden, targets), expected)


def test_padding_row_is_zero_ignored_and_frozen(device):
    head = tf.NormalizedSoftmaxHead(50, 16, padding_idx=0, device=device)
    assert (head.weight[0] == 0).all()
    hidden = torch.randn(10, 16, device=device)
    targets = torch.randint(1, 50, (10,), device=device)
    targets[:4] = 0
    rows = head(hidden, targets, reduction="none")
    assert (rows[:4] == 0).all()
    rows.sum().backward()
    assert (head.weight.grad[0] == 0).all() and head.weight.grad[1:].abs().sum() > 0


def test_shared_with_input_embedding(device):
    head = tf.NormalizedSoftmaxHead(30, 8, padding_idx=0, device=device)
    emb = nn.Embedding(30, 8, padding_idx=0, device=device)
    emb.weight = head.weight
    seq = torch.randint(1, 30, (3, 5), device=device)
    loss = head(emb(seq), seq)
    loss.backward()
    assert head.weight.grad is not None and emb.weight is head.weight


def test_scores_are_dense_logits(device):
    head = tf.NormalizedSoftmaxHead(20, 8, temperature=0.5, normalize_hidden=True, device=device)
    hidden = torch.randn(3, 8, device=device)
    scores = head.scores(hidden)
    assert scores.shape == (3, 20)
    assert torch.allclose(scores, normalized_logits(hidden, head.weight, temperature=0.5, normalize_hidden=True))
    assert scores.abs().max() <= 2.0 + 1e-5


@pytest.mark.parametrize("kwargs", [{"num_items": 0, "dim": 4}, {"num_items": 5, "dim": 4, "padding_idx": 5}])
def test_bad_construction(kwargs):
    with pytest.raises(ValueError):
        tf.NormalizedSoftmaxHead(**kwargs)


def test_padding_row_zeroed_in_place_without_a_copy_of_the_table_gradient():
    """The table's gradient is the op's own buffer, with the padding row zeroed
    in it (before: a hook cloned the whole (N, d) gradient every step)."""
    head = tf.NormalizedSoftmaxHead(50, 16, padding_idx=0)
    seen = []
    head.weight.register_hook(lambda grad: seen.append(grad.data_ptr()))
    head(torch.randn(8, 16), torch.randint(1, 50, (8,))).backward()
    assert head.weight.grad.data_ptr() == seen[0]
    assert (head.weight.grad[0] == 0).all() and head.weight.grad[1:].abs().sum() > 0
