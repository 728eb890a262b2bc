"""Head/tail split by training popularity, and the trainer's long-tail metrics."""

from __future__ import annotations

import numpy as np
import pytest

from tfllmer_fast.app.longtail import head_mask, item_counts, split_metrics
from tfllmer_fast.app.metrics import metrics_from_ranks


def test_head_holds_the_share_with_the_fewest_items():
    counts = [0, 50, 30, 10, 5, 5]  # item 0 is padding
    assert head_mask(counts, 0.8).tolist() == [False, True, True, False, False, False]
    assert head_mask(counts, 0.81).tolist() == [False, True, True, True, False, False]
    assert head_mask(counts, 1.0).tolist() == [False, True, True, True, True, True]
    assert not head_mask(counts, 0.0).any()
    # ties go to the smaller id: items 4 and 5 both have 5
    assert head_mask(counts, 0.92).tolist() == [False, True, True, True, True, False]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="head_share"):
        head_mask([1, 2], 1.5)
    with pytest.raises(ValueError, match="non-negative"):
        head_mask([1, -2], 0.5)
    with pytest.raises(ValueError, match=r"item ids must lie in \[0, 3\]"):
        item_counts([[1, 4]], 3)


def test_item_counts_and_split_metrics_by_hand():
    counts = item_counts([[1, 2, 1], [1, 3]], 3)
    assert counts.tolist() == [0, 3, 1, 1]
    head = head_mask(counts, 0.6)  # item 1 holds 3 of 5
    ranks = np.array([1, 4, 30, 2])
    targets = np.array([1, 3, 2, 1])
    out = split_metrics(metrics_from_ranks, ranks, targets, head)
    assert out["tail_share"] == 0.5
    assert out["head"]["HR@5"] == 1.0
    assert out["tail"]["HR@5"] == 0.5
    assert out["tail"]["NDCG@10"] == pytest.approx(1 / np.log2(5) / 2)
    only_head = split_metrics(metrics_from_ranks, ranks[[0]], targets[[0]], head)
    assert "tail" not in only_head and only_head["tail_share"] == 0.0


def test_trainer_reports_head_and_tail(tmp_path):
    from tfllmer_fast.app.config import RunConfig
    from tfllmer_fast.app.pipeline import run
    from tfllmer_fast.app.synthetic import planted_dataset
    from tfllmer_fast.app.config import TrainConfig

    data, _ = planted_dataset(num_users=80, num_items=40, clusters=4, max_len=10, seed=2)
    train = TrainConfig(dim=16, max_len=10, batch_size=32, epochs=1, diagnostics_sample=0, head_share=0.5)
    result = run(RunConfig(train=train), data=data)
    for part in ("valid", "test"):
        longtail = result[part]["longtail"]
        assert 0 < longtail["tail_share"] < 1
        # the overall HR@10 is the example-weighted mean of the head and tail HR@10
        mixed = (1 - longtail["tail_share"]) * longtail["head"]["HR@10"] + longtail["tail_share"] * longtail["tail"]["HR@10"]
        assert mixed == pytest.approx(result[part]["HR@10"])
