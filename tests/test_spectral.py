"""DirectSpec / DirectSpec+ against dense references, gradients, and the paper's toy check."""

from __future__ import annotations

import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from tfllmer_fast.app import diagnostics as dg
from tfllmer_fast.app.spectral import direct_spec, direct_spec_plus, distance_temperatures


def _rows(seed=0, b=7, d=5):
    torch.manual_seed(seed)
    return torch.randn(b, d, dtype=torch.float64) * torch.rand(b, 1, dtype=torch.float64) * 3


def test_direct_spec_is_the_dense_formula():
    H = _rows()
    hn = H / H.norm(dim=1, keepdim=True)
    assert torch.allclose(direct_spec(H, 0.3), hn - 0.3 * (hn @ hn.T) @ hn, atol=1e-14)


def test_direct_spec_plus_is_the_dense_formula_for_scalar_and_matrix_gamma():
    H = _rows(1)
    hn = H / H.norm(dim=1, keepdim=True)
    scalar = hn - 0.2 * torch.softmax((hn @ hn.T) * 4.0, dim=-1) @ hn
    assert torch.allclose(direct_spec_plus(H, 0.2, 4.0), scalar, atol=1e-14)
    gamma = torch.full((7, 7), 4.0, dtype=torch.float64)
    gamma[0, 1] = gamma[1, 0] = 3.5
    weights = torch.exp((hn @ hn.T) * gamma)
    matrix = hn - 0.2 * (weights / weights.sum(1, keepdim=True)) @ hn
    assert torch.allclose(direct_spec_plus(H, 0.2, gamma), matrix, atol=1e-14)
    assert not torch.allclose(direct_spec_plus(H, 0.2, gamma), scalar)


def test_gradients_match_finite_differences():
    H = _rows(2, b=5, d=4).requires_grad_()
    gamma = torch.rand(5, 5, dtype=torch.float64) * 3 + 1
    assert torch.autograd.gradcheck(lambda h: direct_spec(h, 0.4), (H,))
    assert torch.autograd.gradcheck(lambda h: direct_spec_plus(h, 0.4, gamma), (H,))


def test_repeated_balancing_raises_erank_monotonically_toward_d():
    """The paper's Algorithm 1 on torch.randn(10, 10): with a small alpha each
    step shrinks large singular values more (S - alpha S^3), so the effective
    rank climbs toward d = 10."""
    torch.manual_seed(0)
    H = F.normalize(torch.randn(10, 10, dtype=torch.float64), dim=-1)
    ranks = [dg.erank(H)]
    for _ in range(40):
        H = direct_spec(H, 0.05)
        ranks.append(dg.erank(H))
    assert all(b > a for a, b in zip(ranks, ranks[1:]))
    assert ranks[0] < 8.5 and ranks[-1] > 9.8


def test_zero_rows_stay_finite():
    H = torch.zeros(3, 4)
    H[1] = 1.0
    for out in (direct_spec(H, 0.5), direct_spec_plus(H, 0.5, 3.0)):
        assert torch.isfinite(out).all()


def test_bad_arguments_are_named():
    H = torch.randn(4, 3)
    with pytest.raises(ValueError, match="alpha"):
        direct_spec(H, -0.1)
    with pytest.raises(ValueError, match="gamma must be"):
        direct_spec_plus(H, 0.1, torch.ones(3, 3))
    with pytest.raises(ValueError, match="gamma has NaN"):
        direct_spec_plus(H, 0.1, float("nan"))
    with pytest.raises(ValueError, match=r"H must be \(B, d\)"):
        direct_spec(torch.randn(4), 0.1)


def test_distance_temperatures_mark_pairs_that_share_an_item():
    R = sp.csr_matrix(torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 1], [0, 0, 1]]).numpy())
    gamma = distance_temperatures(R, torch.tensor([0, 1, 3]), tau_0=2.5, tau_1=3.0)
    assert gamma.tolist() == [[2.5, 2.5, 3.0], [2.5, 2.5, 3.0], [3.0, 3.0, 2.5]]
    with pytest.raises(ValueError, match="tau_0 must be <= tau_1"):
        distance_temperatures(R, [0, 1], tau_0=4.0, tau_1=3.0)
