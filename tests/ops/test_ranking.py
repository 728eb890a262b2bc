"""target_rank: the Triton kernel against the chunked reference."""

from __future__ import annotations

import pytest
import torch

from tfllmer_fast.ops.ranking import target_rank, topk_scores


def _integer_problem(B, N, D, device, dtype=torch.float32, seed=0):
    """Small-integer vectors: every score is exact in fp32 and bf16, so ties
    are real ties and ranks must agree exactly."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randint(-3, 4, (B, D), generator=g).to(device, dtype)
    items = torch.randint(-3, 4, (N, D), generator=g).to(device, dtype)
    targets = torch.randint(0, N, (B,), generator=g).to(device)
    if N > 11:
        items[10] = items[11]
        targets[0] = 10
    lengths = torch.randint(0, 12, (B,), generator=g)
    indptr = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]).to(device)
    excl = torch.randint(0, N, (int(indptr[-1]),), generator=g).to(device)
    return hidden, items, targets, (indptr, excl)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("B,N,D", [(1, 1, 4), (37, 300, 16), (17, 33, 40), (64, 257, 8)])
@pytest.mark.parametrize("with_exclude", [False, True])
def test_exact_ranks_with_ties(B, N, D, dtype, with_exclude, device):
    hidden, items, targets, exclude = _integer_problem(B, N, D, device, dtype)
    exclude = exclude if with_exclude else None
    got = target_rank(hidden, items, targets, exclude=exclude, normalize_items=False, impl="triton")
    ref = target_rank(hidden.double(), items.double(), targets, exclude=exclude, normalize_items=False, impl="torch")
    assert torch.equal(got.cpu(), ref.cpu())


def test_duplicate_of_target_counts_against_it(device):
    hidden = torch.randn(3, 16, device=device)
    items = torch.randn(50, 16, device=device)
    items[7] = items[3]
    targets = torch.tensor([3, 7, 3], device=device)
    got = target_rank(hidden, items, targets, impl="triton", temperature=0.1)
    ref = target_rank(hidden, items, targets, impl="torch", temperature=0.1)
    assert torch.equal(got.cpu(), ref.cpu())
    # The twin is counted against the target, so the rank is at least 2.
    assert (got >= 2).all()


@pytest.mark.parametrize("normalize_hidden", [False, True])
def test_random_normalized_scores(normalize_hidden, device):
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(45, 24, generator=g).to(device)
    items = torch.randn(400, 24, generator=g).to(device)
    items[0] = 0
    targets = torch.randint(0, 400, (45,), generator=g).to(device)
    opts = dict(temperature=0.2, normalize_hidden=normalize_hidden)
    got = target_rank(hidden, items, targets, impl="triton", **opts)
    ref = target_rank(hidden, items, targets, impl="torch", **opts)
    assert torch.equal(got.cpu(), ref.cpu())


def test_every_item_excluded_but_target(device):
    hidden, items, targets, _ = _integer_problem(5, 40, 8, device)
    indptr = torch.arange(0, 5 * 40 + 1, 40, device=device)
    excl = torch.arange(40, device=device).repeat(5)
    ranks = target_rank(hidden, items, targets, exclude=(indptr, excl), normalize_items=False, impl="triton")
    assert ranks.tolist() == [1] * 5


def test_non_contiguous(device):
    hidden, items, targets, exclude = _integer_problem(20, 90, 16, device)
    h_view = torch.cat([hidden, hidden], 1)[:, ::2]
    e_view = items.t().contiguous().t()
    assert not h_view.is_contiguous() and not e_view.is_contiguous()
    got = target_rank(h_view, e_view, targets, exclude=exclude, normalize_items=False, impl="triton")
    ref = target_rank(h_view.contiguous(), items, targets, exclude=exclude, normalize_items=False, impl="torch")
    assert torch.equal(got, ref)


def test_compile_fullgraph(device):
    torch._dynamo.reset()
    hidden, items, targets, exclude = _integer_problem(20, 90, 16, device)

    def ranks(h, e, t, indptr, excl):
        return target_rank(h, e, t, exclude=(indptr, excl), normalize_items=False, impl="triton")

    expected = target_rank(hidden, items, targets, exclude=exclude, normalize_items=False, impl="torch")
    assert torch.equal(torch.compile(ranks, fullgraph=True)(hidden, items, targets, *exclude), expected)


def _check_topk_invariants(top, hidden, items, k, exclude, normalize_items):
    ref = topk_scores(hidden.double(), items.double(), k, exclude=exclude, normalize_items=normalize_items,
                      impl="torch")
    values, indices = top.values.cpu(), top.indices.cpu()
    assert values.shape == indices.shape == (hidden.shape[0], k)
    assert (values[:, 1:] <= values[:, :-1]).all()
    assert torch.equal(values[:, -1].double(), ref.values[:, -1].cpu())  # k-th score as the reference's
    for b in range(hidden.shape[0]):
        if exclude is not None:
            excluded = set(exclude[1][exclude[0][b] : exclude[0][b + 1]].tolist())
            assert not excluded & set(indices[b].tolist())
        for j in range(k - 1):
            if values[b, j] == values[b, j + 1] and indices[b, j + 1] >= 0:
                assert indices[b, j] < indices[b, j + 1]  # ties go to the smaller id


@pytest.mark.parametrize("k", [1, 10, 64, 100])
@pytest.mark.parametrize("with_exclude", [False, True])
def test_topk_invariants_with_ties(k, with_exclude, device):
    hidden, items, _, exclude = _integer_problem(20, 150 if k <= 10 else 300, 16, device)
    exclude = exclude if with_exclude else None
    top = topk_scores(hidden, items, k, exclude=exclude, normalize_items=False, impl="triton")
    _check_topk_invariants(top, hidden, items, k, exclude, False)
    ref = topk_scores(hidden, items, k, exclude=exclude, normalize_items=False, impl="torch")
    assert torch.equal(top.indices, ref.indices)  # exact integer scores: the same list


@pytest.mark.slow
def test_topk_large_k(device):
    """k = 500, K = 512: the largest set the kernel keeps (slow under the interpreter)."""
    hidden, items, _, exclude = _integer_problem(4, 1500, 8, device)
    top = topk_scores(hidden, items, 500, exclude=exclude, normalize_items=False, impl="triton")
    _check_topk_invariants(top, hidden, items, 500, exclude, False)


def test_topk_normalized_random(device):
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(20, 24, generator=g).to(device)
    items = torch.randn(150, 24, generator=g).to(device)
    top = topk_scores(hidden, items, 10, temperature=0.1, impl="triton")
    ref = topk_scores(hidden, items, 10, temperature=0.1, impl="torch")
    assert torch.equal(top.indices, ref.indices)
    assert torch.allclose(top.values, ref.values, rtol=1e-5)


def test_topk_rows_short_of_candidates(device):
    hidden, items, _, _ = _integer_problem(3, 40, 8, device)
    indptr = torch.tensor([0, 38, 38, 40], device=device)
    excl = torch.cat([torch.arange(38), torch.tensor([0, 1])]).to(device)
    for impl in ("triton", "torch"):
        top = topk_scores(hidden, items, 5, exclude=(indptr, excl), normalize_items=False, impl=impl)
        assert top.indices[0, :2].tolist() in ([38, 39], [39, 38]) and top.indices[0, 2:].tolist() == [-1] * 3
        assert torch.isinf(top.values[0, 2:]).all()


def test_topk_errors(device):
    hidden, items, _, exclude = _integer_problem(3, 40, 8, device)
    with pytest.raises(ValueError, match="k must lie in 1..N = 40"):
        topk_scores(hidden, items, 41)
    long = (torch.tensor([0, 40, 40, 40], device=device), torch.arange(40, device=device))
    wide = torch.randn(3, 8, device=device), torch.randn(2000, 8, device=device)
    with pytest.raises(ValueError, match="impl='triton' serves k <= "):
        topk_scores(*wide, 1000, exclude=(long[0], long[1]), impl="triton")


@pytest.mark.parametrize("k", [1, 7, 40])
@pytest.mark.parametrize("with_exclude", [False, True])
def test_topk_reference_is_the_first_k_of_a_stable_sort(k, with_exclude):
    """The CPU path selects without sorting all N; on tie-heavy integer scores
    its list must be the one a stable descending sort gives."""
    from tfllmer_fast.options import HeadOptions
    from tfllmer_fast.reference.ranking import _chunk_scores

    hidden, items, _, exclude = _integer_problem(30, 90, 4, "cpu")
    exclude = exclude if with_exclude else None
    top = topk_scores(hidden, items, k, exclude=exclude, normalize_items=False, impl="torch")
    scores = _chunk_scores(hidden, items, 0, 30, exclude, HeadOptions(normalize_items=False))
    v, i = torch.sort(scores, dim=1, descending=True, stable=True)
    assert torch.equal(top.values, v[:, :k])
    assert torch.equal(top.indices, i[:, :k].masked_fill(v[:, :k] == float("-inf"), -1))


def test_topk_reference_with_nan_scores_ranks_them_first_as_the_sort_did():
    hidden, items = torch.ones(2, 3), torch.randn(10, 3)
    items[4] = float("nan")
    top = topk_scores(hidden, items, 3, normalize_items=False, impl="torch")
    assert top.indices[:, 0].tolist() == [4, 4] and torch.isnan(top.values[:, 0]).all()
    assert torch.isfinite(top.values[:, 1:]).all()
