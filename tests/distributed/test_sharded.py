"""The sharded head and ranking over 2 and 3 gloo processes against the single-process ops."""

from __future__ import annotations

import pytest
import torch

import tfllmer_fast as tf
from tests.distributed import cases
from tests.distributed.workers import run_workers
from tests.ops.normalized_ce_cases import rel_err

OPTION_SETS = {
    "default": {},
    "smoothing_weights_sum": {"label_smoothing": 0.2, "use_weight": True, "reduction": "sum"},
    "normalize_hidden_none": {"normalize_hidden": True, "temperature": 0.3, "reduction": "none"},
    "weights_mean_lse": {"use_weight": True, "temperature": 0.5, "return_lse": True},
}


def _single_process(world, dtype, impl, options, equal):
    """Per rank: the loss and dH of normalized_softmax_ce on the full table; dE
    as the mean over ranks of each rank's table gradient."""
    hidden, table, targets, weight, sizes = cases.make_data(world, dtype, equal)
    options = dict(options)
    use_weight = options.pop("use_weight", False)
    e = table.clone().requires_grad_()
    out = []
    for r in range(world):
        own = cases.rows_of(r, sizes)
        h = hidden[own].clone().requires_grad_()
        loss = tf.normalized_softmax_ce(h, e, targets[own], impl=impl, row_weight=weight[own] if use_weight else None,
                                        **options)
        (cases.objective(loss) / world).backward()
        out.append({"loss": cases.loss_value(loss).detach(), "dh": h.grad * world})
    return out, e.grad


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("options", OPTION_SETS.values(), ids=OPTION_SETS.keys())
@pytest.mark.parametrize("impl,dtype,tol", [("torch", torch.float64, 1e-12), ("triton", torch.float32, 2e-5)])
def test_sharded_ce_equals_single_process(world, options, impl, dtype, tol, tmp_path):
    got = run_workers(world, tmp_path, cases.ce_rank, dtype, impl, dict(options), False)
    ref, ref_de = _single_process(world, dtype, impl, options, False)
    for r, (g, want) in enumerate(zip(got, ref)):
        assert rel_err(g["loss"], want["loss"], 1.0) < tol, f"rank {r} loss"
        assert rel_err(g["dh"], want["dh"]) < tol, f"rank {r} dH"
    de = torch.cat([g["de"] for g in got])
    assert rel_err(de, ref_de) < tol, "dE"


def test_gradients_compose_with_ddp_averaging(tmp_path):
    """2 ranks at batch 6 with DDP's mean of the query gradients equal one process at batch 12."""
    world = 2
    got = run_workers(world, tmp_path, cases.ce_rank, torch.float64, "torch", {}, True)
    hidden, table, targets, _, sizes = cases.make_data(world, torch.float64, equal=True)
    h = hidden.clone().requires_grad_()
    e = table.clone().requires_grad_()
    tf.normalized_softmax_ce(h, e, targets, impl="torch").backward()
    assert rel_err(torch.cat([g["de"] for g in got]), e.grad) < 1e-12
    # DDP averages the backbone's gradients: each rank's dH / world.
    assert rel_err(torch.cat([g["dh"] for g in got]) / world, h.grad) < 1e-12


@pytest.mark.parametrize("world,impl,dtype,ties", [
    (2, "torch", torch.float64, False), (3, "torch", torch.float64, False),
    (2, "triton", torch.float32, True), (3, "triton", torch.bfloat16, True), (3, "torch", torch.float32, True),
])
def test_sharded_ranking_equals_single_process(world, impl, dtype, ties, tmp_path):
    """The fused counting kernel per shard (or the chunked reference) against
    the single-process target_rank; with ``ties`` copies of targets sit in
    every shard, and count against them wherever they are."""
    k = 7
    got = run_workers(world, tmp_path, cases.ranking_rank, k, impl, dtype, ties)
    hidden, table, targets, sizes = cases.ranking_data(world, dtype, ties)
    exclude = cases.exclusions(sizes)
    ranks = tf.target_rank(hidden, table, targets, exclude=exclude, impl=impl)
    top = tf.topk_scores(hidden, table, k, exclude=exclude, impl=impl)
    for r, g in enumerate(got):
        own = cases.rows_of(r, sizes)
        assert torch.equal(g["ranks"], ranks[own]), f"rank {r}"
        assert torch.equal(g["indices"], top.indices[own]), f"rank {r} top-k ids"
        assert torch.allclose(g["values"].double(), top.values[own].double(), rtol=1e-6)


def test_sharded_rank_memory_does_not_grow_with_the_users(tmp_path):
    """One chunk of scores at a time: at most 4 rows x the shard held, for 8 or
    64 users a rank alike (before: every chunk was kept, B x shard)."""
    (tmp_path / "small").mkdir()
    (tmp_path / "large").mkdir()
    small = run_workers(2, tmp_path / "small", cases.rank_memory_rank, 8)
    large = run_workers(2, tmp_path / "large", cases.rank_memory_rank, 64)
    for s, g in zip(small, large):
        assert s["elements"] == g["elements"] and 0 < g["elements"] <= 4 * 12


@pytest.mark.parametrize("what,message", [("gap", "must tile"), ("short", "cover 22 rows"),
                                          ("width", "width differs")])
def test_bad_setups_raise_on_every_rank(what, message, tmp_path):
    got = run_workers(2, tmp_path, cases.bad_setup_rank, what)
    for g in got:
        assert g["raised"] is not None and message in g["raised"], g


def test_uninitialised_process_group_is_named():
    with pytest.raises(RuntimeError, match="torch.distributed is not initialized"):
        tf.distributed.sharded_normalized_softmax_ce(torch.randn(2, 4), torch.randn(3, 4), torch.zeros(2).long(),
                                                    shard_start=0, num_items=3)


@pytest.mark.parametrize("world,smoothing", [(2, 0.0), (3, 0.1)])
def test_collective_bytes_match_the_formula(world, smoothing, tmp_path):
    """What the ranks hand to collectives, counted, equals head_collective_bytes."""
    from tfllmer_fast.distributed.volume import head_collective_bytes

    got = run_workers(world, tmp_path, cases.counted_ce_rank, torch.float32, smoothing)
    expected = head_collective_bytes(got[0]["rows"] * world, cases.D, world, hidden_bytes=4, grad_bytes=4,
                                     label_smoothing=smoothing > 0)["total"]
    assert [g["bytes"] for g in got] == [expected] * world
