"""Property tests of ``target_rank`` and ``topk_scores`` (fused path under the interpreter).

Hypothesis draws shapes, dtypes, options, the layout of every tensor argument
(queries, items, targets, exclusion ``indptr`` and items; int32 and int64
ids), exclusion lists (empty rows, repeats, the target itself) and hard items:
exact duplicates of targets (ties, which count against the target), near
duplicates, zero rows, NaN rows. Ranks and top-k lists are checked by their
invariants against fp64 scores of the operands as the kernels round them:
every decision the scores make by more than the rounding must be made, exact
ties must be ties, and only decisions within the rounding may go either way.
The plain-torch path (the CPU fallback) is held to the same invariants, and
every buffer sits between canaries.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.ops.layouts import MATRIX_LAYOUTS, VECTOR_LAYOUTS, place
from tests.ops.property_runs import DEVICE, SETTINGS
from tfllmer_fast.kernels import config
from tfllmer_fast.ops.ranking import target_rank, topk_scores

# A score's error against fp64 on the rounded operands, relative to sum_k |h_k e_k| r:
# 3-pass TF32 products and an fp32 sum of up to 128 terms.
SCORE_ROUNDOFF = 2.0**-18


@st.composite
def problems(draw):
    B = draw(st.sampled_from([1, 3, 17, 33]))
    N = draw(st.sampled_from([2, 5, 31, 33, 70]))
    d = draw(st.sampled_from([16, 32, 48, 64, 128]))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    hidden = torch.randn(B, d, generator=g)
    items = torch.randn(N, d, generator=g)
    targets = torch.randint(0, N, (B,), generator=g)
    hard = draw(st.sets(st.sampled_from(["duplicates", "near_duplicates", "zero_item", "nan_item", "nan_query"]),
                        max_size=3))
    if "duplicates" in hard:
        items[torch.randint(0, N, (max(N // 4, 1),), generator=g)] = items[targets[0]].clone()
    if "near_duplicates" in hard:
        twins = torch.randint(0, N, (max(N // 4, 1),), generator=g)
        items[twins] = items[targets[-1]] * (1 + 3e-2 * torch.randn(len(twins), 1, generator=g))
    if "zero_item" in hard:
        items[torch.randint(0, N, (1,), generator=g)] = 0.0
    if "nan_item" in hard:
        items[torch.randint(0, N, (1,), generator=g), 0] = float("nan")
    if "nan_query" in hard:
        hidden[torch.randint(0, B, (1,), generator=g), 0] = float("nan")
    lengths = torch.randint(0, 6, (B,), generator=g)
    excl = torch.randint(0, N, (int(lengths.sum()),), generator=g)
    if draw(st.booleans()) and len(excl):
        excl[0] = targets[0]  # the target in its own exclusion list
    indptr = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    options = dict(normalize_items=draw(st.booleans()), normalize_hidden=draw(st.booleans()),
                   temperature=draw(st.sampled_from([0.01, 0.3, 1.0])))
    layouts = dict(
        hidden=(draw(st.sampled_from(MATRIX_LAYOUTS)), draw(st.integers(0, 3))),
        items=(draw(st.sampled_from(MATRIX_LAYOUTS)), draw(st.integers(0, 3))),
        targets=(draw(st.sampled_from(VECTOR_LAYOUTS)), draw(st.integers(0, 3))),
        indptr=(draw(st.sampled_from(VECTOR_LAYOUTS)), draw(st.integers(0, 3))),
        excl=(draw(st.sampled_from(VECTOR_LAYOUTS)), draw(st.integers(0, 3))),
    )
    ids = draw(st.sampled_from([torch.int64, torch.int32]))
    with_exclude = draw(st.booleans())
    k = min(draw(st.sampled_from([1, 3, 10, 40])), N)
    return dict(hidden=hidden.to(dtype), items=items.to(dtype), targets=targets.to(ids),
                exclude=(indptr.to(ids), excl.to(ids)) if with_exclude else None, options=options,
                layouts=layouts, k=k)


def _placed(problem):
    """Every argument in its drawn layout, index canaries valid but wrong ids."""
    L, N = problem["layouts"], problem["items"].shape[0]
    out = {"hidden": place(problem["hidden"].to(DEVICE), *L["hidden"]),
           "items": place(problem["items"].to(DEVICE), *L["items"]),
           "targets": place(problem["targets"].to(DEVICE), *L["targets"], canary=(N - 1) // 2)}
    if problem["exclude"] is not None:
        indptr, excl = problem["exclude"]
        out["indptr"] = place(indptr.to(DEVICE), *L["indptr"], canary=int(indptr[-1]) // 2)
        out["excl"] = place(excl.to(DEVICE), *L["excl"], canary=N // 3)
    return out


def _call(fn, problem, extra, *, impl):
    placed = _placed(problem)
    exclude = (placed["indptr"].view, placed["excl"].view) if problem["exclude"] is not None else None
    with config.guarded_outputs() as outputs:
        result = fn(placed["hidden"].view, placed["items"].view, *extra(placed), exclude=exclude, impl=impl,
                    **problem["options"])
    outputs.check()
    for name, p in placed.items():
        assert p.untouched(), f"the canaries around {name} changed"
    return type(result)(*(x.cpu() for x in result)) if isinstance(result, tuple) else result.cpu()


def _oracle(problem):
    """fp64 order scores <h, e_j> r_j of the operands as the kernels round them,
    each summed in one order (so exact duplicates tie), their rounding bounds,
    each row's positive scale, and its candidates (not excluded)."""
    hidden, items = problem["hidden"], problem["items"]
    h, e = hidden.double(), items.double()
    opts = problem["options"]
    if opts["normalize_items"]:
        r = torch.linalg.vector_norm(items, dim=1, dtype=torch.float32).clamp_min(1e-12).reciprocal().double()
    else:
        r = torch.ones(items.shape[0], dtype=torch.float64)
    products = h[:, None, :] * e[None, :, :]
    scores = products.sum(-1) * r[None, :]
    tol = SCORE_ROUNDOFF * products.abs().sum(-1) * r[None, :] + 1e-300
    candidates = torch.ones(scores.shape, dtype=torch.bool)
    if problem["exclude"] is not None:
        indptr, excl = (x.long() for x in problem["exclude"])
        rows = torch.repeat_interleave(torch.arange(len(h)), indptr.diff())
        candidates[rows, excl] = False
    return scores, tol, candidates, e


def _check_ranks(ranks, problem):
    scores, tol, candidates, e = _oracle(problem)
    t = problem["targets"].long()
    B = scores.shape[0]
    assert ranks.shape == (B,) and ranks.dtype == torch.int64
    for i in range(B):
        c = candidates[i].clone()
        c[t[i]] = False
        s, st_ = scores[i], scores[i, t[i]]
        if torch.isnan(st_):
            lo = hi = int(c.sum())  # a NaN target loses to every candidate
        else:
            band = tol[i] + tol[i, t[i]]
            nan = s.isnan()
            twin = (e == e[t[i]]).all(1)
            lo = int((c & (nan | (s > st_ + band) | twin)).sum())
            hi = int((c & (nan | (s >= st_ - band))).sum())
        got = int(ranks[i]) - 1
        assert lo <= got <= hi, f"row {i}: rank {got + 1}, the scores allow {lo + 1}..{hi + 1}"


def _check_topk(top, problem):
    scores, tol, candidates, e = _oracle(problem)
    opts, k = problem["options"], problem["k"]
    B = scores.shape[0]
    values, indices = top.values.double(), top.indices
    assert values.shape == indices.shape == (B, k)
    h = problem["hidden"].double()
    row_scale = (1.0 / torch.linalg.vector_norm(h, dim=1).clamp_min(1e-12) if opts["normalize_hidden"]
                 else torch.ones(B, dtype=torch.float64)) / opts["temperature"]
    for i in range(B):
        n_cand = int(candidates[i].sum())
        got = indices[i].tolist()
        real = [j for j in got if j >= 0]
        assert got[: len(real)] == real and len(real) == min(k, n_cand), f"row {i}: {got} ({n_cand} candidates)"
        assert len(set(real)) == len(real) and all(candidates[i, j] for j in real), f"row {i}: {got}"
        s = scores[i]
        nan = s.isnan() & candidates[i]
        n_nan = min(int(nan.sum()), k)
        # NaN first, as a descending torch.sort puts it, smallest ids first.
        assert real[:n_nan] == nan.nonzero().flatten()[:n_nan].tolist(), f"row {i}: {got}, NaN at {nan.nonzero()}"
        assert values[i, :n_nan].isnan().all()
        finite = real[n_nan:]
        for slot, j in enumerate(finite, start=n_nan):
            if torch.isnan(values[i, slot]):
                assert torch.isnan(s[j]) or torch.isnan(row_scale[i]), f"row {i}: NaN value for item {j}"
                continue
            expected = s[j] * row_scale[i]
            assert abs(values[i, slot] - expected) <= 2 * tol[i, j] * row_scale[i] + 1e-6 * abs(expected), (
                f"row {i} item {j}: value {values[i, slot]} vs {expected}")
        if finite:
            worst = min(s[j] - tol[i, j] for j in finite)
            left = candidates[i].clone()
            left[real] = False
            left &= ~nan
            assert not bool((left & (s > worst + tol[i])).any()), f"row {i}: a better item was left out of {got}"
            for j in finite:  # exact ties go to the smaller id
                twins = ((e == e[j]).all(1) & left).nonzero().flatten()
                assert not bool((twins < j).any()), f"row {i}: {j} returned before its twin {twins.tolist()}"
        order = values[i, n_nan : len(real)]
        assert bool((order[1:] <= order[:-1] + 1e-6 * order[:-1].abs()).all()), f"row {i}: {values[i]}"


@settings(max_examples=30, **SETTINGS)
@given(problems())
def test_target_rank_invariants_any_layout(problem):
    for impl in ("triton", "torch"):
        _check_ranks(_call(target_rank, problem, lambda p: (p["targets"].view,), impl=impl), problem)


@settings(max_examples=30, **SETTINGS)
@given(problems())
def test_topk_invariants_any_layout(problem):
    for impl in ("triton", "torch"):
        _check_topk(_call(topk_scores, problem, lambda p: (problem["k"],), impl=impl), problem)


@pytest.mark.slow
@settings(max_examples=300, **SETTINGS)
@given(problems())
def test_ranking_invariants_any_layout_large_budget(problem):
    for impl in ("triton", "torch"):
        _check_ranks(_call(target_rank, problem, lambda p: (p["targets"].view,), impl=impl), problem)
        _check_topk(_call(topk_scores, problem, lambda p: (problem["k"],), impl=impl), problem)
