"""Diagnostics against hand-computed cases and an explicit Hessian."""

from __future__ import annotations

import math

import pytest
import torch

from tfllmer_fast.app import diagnostics as dg


def test_norm_disparity_ignores_zero_rows():
    emb = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.5, 0.0], [1.0, 0.0]])
    assert dg.norm_disparity(emb) == pytest.approx(10.0)


def test_erank_hand_cases():
    assert dg.erank(torch.eye(4)) == pytest.approx(4.0)
    assert dg.erank(torch.ones(5, 3)) == pytest.approx(1.0)
    # singular values 3 and 1: q = (3/4, 1/4)
    q = torch.tensor([0.75, 0.25])
    assert dg.erank(torch.diag(torch.tensor([3.0, 1.0]))) == pytest.approx(math.exp(-(q * q.log()).sum().item()))


def test_two_items_kappa_one_and_coherence_is_the_cosine():
    items = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    out = dg.effective_stats(torch.tensor([[0.3, 0.1]]), items, torch.tensor([0]), m=2)
    assert out.coherence.item() == pytest.approx(0.6)
    assert out.kappa.item() == pytest.approx(1.0)  # C has rank one: one nonzero eigenvalue


@pytest.mark.parametrize("c", [0.0, 0.3, 0.7])
def test_three_items_uniform_softmax(c):
    """h = 0 gives p = 1/3; with G = [[1, c, 0], [c, 1, 0], [0, 0, 1]] the
    nonzero eigenvalues of C^(1/2) G C^(1/2) = P G P / 3 are (1 - c) / 3 and
    (1 + c / 3) / 3 (P the projector orthogonal to the ones vector)."""
    s = math.sqrt(1 - c * c)
    items = torch.tensor([[1.0, 0.0, 0.0], [c, s, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    out = dg.effective_stats(torch.zeros(1, 3, dtype=torch.float64), items, torch.tensor([0]), m=3)
    assert out.kappa.item() == pytest.approx((1 + c / 3) / (1 - c), rel=1e-5)
    assert out.coherence.item() == pytest.approx(c, abs=1e-6)
    expected = (1 + 2 * c) / (1 - 2 * c) if 2 * c < 1 else float("nan")
    assert out.gershgorin.item() == pytest.approx(expected, rel=1e-5, nan_ok=True)


def test_kappa_equals_the_explicit_hessian_on_a_random_case():
    torch.manual_seed(0)
    hidden, items = torch.randn(4, 24, dtype=torch.float64), torch.randn(60, 24, dtype=torch.float64)
    targets = torch.tensor([3, 17, 0, 59])
    out = dg.effective_stats(hidden, items, targets, m=6, temperature=0.5)
    for i in range(4):
        e = torch.nn.functional.normalize(items[out.items[i]], dim=-1)
        p = torch.softmax(hidden[i] @ e.T / 0.5, dim=0)
        hessian = e.T @ (torch.diag(p) - torch.outer(p, p)) @ e / 0.25  # d x d
        lam = torch.linalg.eigvalsh(hessian)
        lam = lam[lam > 1e-9 * lam.max()]
        assert out.kappa[i].item() == pytest.approx((lam.max() / lam.min()).item(), rel=1e-4)
        # the set: target first, then the m - 1 best other items by score
        scores = hidden[i] @ torch.nn.functional.normalize(items, dim=-1).T
        scores[targets[i]] = -float("inf")
        assert set(out.items[i, 1:].tolist()) == set(torch.topk(scores, 5).indices.tolist())


def test_excluded_items_are_not_negatives():
    torch.manual_seed(1)
    hidden, items = torch.randn(2, 8), torch.randn(30, 8)
    exclude = (torch.tensor([0, 3, 4]), torch.tensor([1, 2, 3, 9]))
    out = dg.effective_stats(hidden, items, torch.tensor([5, 6]), m=4, exclude=exclude)
    assert not set(out.items[0, 1:].tolist()) & {1, 2, 3}
    assert 9 not in out.items[1, 1:].tolist() and out.items[:, 0].tolist() == [5, 6]
