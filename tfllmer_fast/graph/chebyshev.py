"""Chebyshev expansion of the Rec-PCA graph filter f(mu) = sqrt(1 - beta + beta mu)."""

from __future__ import annotations

import numpy as np

_NODES = 4096


def filter_function(beta: float):
    return lambda mu: np.sqrt(np.clip(1.0 - beta + beta * mu, 0.0, None))


def chebyshev_coefficients(beta: float, order: int, nodes: int = _NODES) -> np.ndarray:
    """c_0..c_order with f(mu) ~ sum_k c_k T_k(mu) on [-1, 1] (c_0 not halved),
    by Chebyshev-Gauss quadrature: c_k = (2 - [k = 0]) / M sum_m f(cos t_m) cos(k t_m)."""
    theta = np.pi * (np.arange(nodes) + 0.5) / nodes
    values = filter_function(beta)(np.cos(theta))
    k = np.arange(order + 1)[:, None]
    coeffs = 2.0 / nodes * (values[None, :] * np.cos(k * theta[None, :])).sum(axis=1)
    coeffs[0] /= 2.0
    return coeffs


def truncation_bound(beta: float, order: int, terms: int = 1024) -> float:
    """sup over [-1, 1] of |f - its order-K expansion| <= sum_{k > K} |c_k|."""
    return float(np.abs(chebyshev_coefficients(beta, terms)[order + 1 :]).sum())


def apply_chebyshev(adjacency, z, coeffs):
    """sum_k c_k T_k(Â) z with T_0 = I, T_1 = Â, T_{k+1} = 2 Â T_k - T_{k-1}
    (one sparse-dense product per order)."""
    prev, cur = z, None
    out = coeffs[0] * z
    if len(coeffs) > 1:
        cur = adjacency @ z
        out = out + coeffs[1] * cur
    for c in coeffs[2:]:
        prev, cur = cur, 2.0 * (adjacency @ cur) - prev
        out = out + c * cur
    return out
