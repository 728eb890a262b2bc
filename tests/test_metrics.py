"""Metrics from ranks and the full-ranking ops, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import tfllmer_fast as tf
from tfllmer_fast.app.metrics import exclusion_csr, metrics_from_ranks
from tfllmer_fast.ops.ranking import target_rank, topk_scores


def test_metrics_by_hand():
    m = metrics_from_ranks(np.array([1, 3, 11]))
    assert m["HR@5"] == pytest.approx(2 / 3) and m["HR@10"] == pytest.approx(2 / 3) and m["HR@20"] == 1.0
    assert m["NDCG@10"] == pytest.approx((1 + 1 / math.log2(4)) / 3)
    assert m["NDCG@20"] == pytest.approx((1 + 0.5 + 1 / math.log2(12)) / 3)
    assert m["MRR"] == pytest.approx((1 + 1 / 3 + 1 / 11) / 3)


def _items(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_ties_count_against_target():
    # Every item scores the same: the target must get the worst rank.
    hidden = torch.ones(1, 2)
    items = _items([[1, 0]] * 5)
    rank = target_rank(hidden, items, torch.tensor([2]), normalize_items=False)
    assert rank.tolist() == [5]


def test_exclusion_and_target_never_excluded():
    hidden = torch.tensor([[1.0, 0.0]])
    items = _items([[0, 0], [5, 0], [4, 0], [3, 0], [2, 0]])  # scores 0, 5, 4, 3, 2
    t = torch.tensor([3])
    assert target_rank(hidden, items, t, normalize_items=False).tolist() == [3]
    exclude = (torch.tensor([0, 3]), torch.tensor([1, 3, 0]))  # excludes item 1, item 0 and the target itself
    assert target_rank(hidden, items, t, exclude=exclude, normalize_items=False).tolist() == [2]


def test_exclusion_csr_includes_padding_and_history():
    indptr, items = exclusion_csr([np.array([3, 1, 3]), np.array([], dtype=np.int64)], 2, "cpu")
    assert indptr.tolist() == [0, 3, 4] and items.tolist() == [0, 1, 3, 0]
    indptr, items = exclusion_csr([np.array([3, 1])], 1, "cpu", exclude_history=False)
    assert items.tolist() == [0]


def _random_problem(B=23, N=157, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, D, generator=g)
    items = torch.randn(N, D, generator=g)
    items[5] = items[6]  # exact ties
    targets = torch.randint(0, N, (B,), generator=g)
    lengths = torch.randint(0, 9, (B,), generator=g)
    indptr = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    excl = torch.randint(0, N, (int(indptr[-1]),), generator=g)
    return hidden, items, targets, (indptr, excl)


@pytest.mark.parametrize("chunk_size", [1, 5, None])
def test_target_rank_matches_dense(chunk_size):
    hidden, items, targets, exclude = _random_problem()
    ranks = target_rank(hidden, items, targets, exclude=exclude, temperature=0.3, chunk_size=chunk_size)
    scores = tf.reference.normalized_logits(hidden, items, temperature=0.3)
    for b in range(hidden.shape[0]):
        s = scores[b].clone()
        target_score = s[targets[b]].item()
        s[exclude[1][exclude[0][b] : exclude[0][b + 1]]] = float("-inf")
        s[targets[b]] = float("-inf")
        assert ranks[b].item() == 1 + int((s >= target_score).sum())


def test_topk_invariants():
    hidden, items, targets, exclude = _random_problem()
    k = 20
    top = topk_scores(hidden, items, k, exclude=exclude, chunk_size=4)
    assert top.values.shape == (23, k)
    assert (top.values[:, 1:] <= top.values[:, :-1]).all()
    scores = tf.reference.normalized_logits(hidden, items)
    for b in range(23):
        excluded = set(exclude[1][exclude[0][b] : exclude[0][b + 1]].tolist())
        assert not excluded & set(top.indices[b].tolist())
        s = scores[b].clone()
        s[list(excluded)] = float("-inf")
        # The kernels' scores (<h, e> / ||e||) round apart from F.normalize's.
        torch.testing.assert_close(top.values[b, -1], torch.sort(s, descending=True).values[k - 1],
                                   rtol=1e-6, atol=1e-6)
        for j in range(k - 1):  # ties go to the smaller id
            if top.values[b, j] == top.values[b, j + 1]:
                assert top.indices[b, j] < top.indices[b, j + 1]


def test_ranking_errors():
    hidden, items, targets, exclude = _random_problem()
    with pytest.raises(ValueError, match="k must lie in 1..N = 157"):
        topk_scores(hidden, items, 158)
    with pytest.raises(ValueError, match="out of range"):
        target_rank(hidden, items, torch.full((23,), 157))
    with pytest.raises(ValueError, match="exclude indptr must have B \\+ 1 = 24 entries"):
        target_rank(hidden, items, targets, exclude=(exclude[0][:-1], exclude[1]))
    with pytest.raises(ValueError, match="exclude items must lie in"):
        target_rank(hidden, items, targets, exclude=(exclude[0], exclude[1] + 1000))


def test_every_item_excluded_but_target():
    hidden, items = torch.randn(2, 4), torch.randn(10, 4)
    targets = torch.tensor([3, 7])
    indptr = torch.tensor([0, 10, 20])
    excl = torch.arange(10).repeat(2)
    assert target_rank(hidden, items, targets, exclude=(indptr, excl)).tolist() == [1, 1]
