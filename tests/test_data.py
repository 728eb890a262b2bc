"""Readers, k-core and splits."""

from __future__ import annotations

import numpy as np
import pytest

from tests.graph.conftest import DATA
from tfllmer_fast.app import data


def test_s3rec_reader(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("1 5 3 5\n2 3 7\n\n3 7\n")
    d = data.read_s3rec(path)
    assert d.num_users == 3 and d.num_items == 3 and d.num_interactions == 6
    # items 3, 5, 7 remap to 1, 2, 3 in sorted order; per-user order kept
    assert [s.tolist() for s in d.sequences] == [[2, 1, 2], [1, 3], [3]]
    assert d.item_ids.tolist()[1:] == [3, 5, 7]


@pytest.mark.parametrize("content, message", [("1 2 x\n", r"d.txt:1: expected integer ids"),
                                              ("1 2\n7\n", r"d.txt:2: a user line needs at least one item"),
                                              ("\n", "no interactions")])
def test_s3rec_malformed(tmp_path, content, message):
    path = tmp_path / "d.txt"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        data.read_s3rec(path)


def test_recbole_reader_any_column_order(tmp_path):
    path = tmp_path / "d.inter"
    path.write_text("timestamp:float\titem_id:token\tuser_id:token\n3\ta\tu1\n1\tb\tu1\n2\tc\tu1\n5\ta\tu2\n")
    d = data.read_interactions(path)
    assert d.num_users == 2 and d.num_items == 3
    assert d.sequences[0].tolist() == [2, 3, 1]  # b, c, a by time
    assert d.timestamps[0].tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("content, message", [
    ("item_id:token\tts:float\n", "header has no user_id column"),
    ("user_id:token\titem_id:token\ttimestamp:float\nu\ti\n", r"d.inter:2: expected 3 fields, got 2"),
    ("user_id:token\titem_id:token\ttimestamp:float\nu\ti\tnoon\n", r"d.inter:2: timestamp 'noon' is not a number"),
])
def test_recbole_malformed(tmp_path, content, message):
    path = tmp_path / "d.inter"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        data.read_interactions(path)


def test_dataframe_reader():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"user_id": [1, 1, 2], "item_id": [10, 20, 10], "timestamp": [2, 1, 3]})
    d = data.from_dataframe(df)
    assert d.sequences[0].tolist() == [2, 1]
    with pytest.raises(ValueError, match="no column 'ts'"):
        data.from_dataframe(df, time_col="ts")


def test_k_core_by_hand():
    # k = 2. Item 4 appears once -> dropped; then user 2 (items 3, 4) has one
    # interaction left -> dropped; then item 3 appears once -> dropped.
    d = data.Interactions([np.array([1, 2, 1, 2]), np.array([3, 4]), np.array([1, 2, 3])], num_items=4)
    core = data.k_core(d, 2)
    assert core.num_users == 2 and core.num_items == 2
    assert [s.tolist() for s in core.sequences] == [[1, 2, 1, 2], [1, 2]]


def test_leave_one_out():
    d = data.Interactions([np.array([1, 2, 3, 4]), np.array([5, 6])], num_items=6)
    sp = data.leave_one_out(d)
    assert [s.tolist() for s in sp.train] == [[1, 2], [5, 6]]
    assert sp.valid.targets.tolist() == [3] and sp.valid.histories[0].tolist() == [1, 2]
    assert sp.test.targets.tolist() == [4] and sp.test.histories[0].tolist() == [1, 2, 3]
    assert sp.counts["train_only_users"] == 1


def test_chronological_split():
    seqs = [np.array([1, 2, 3, 4, 5]), np.array([6, 7, 8, 9, 10])]
    times = [np.array([1.0, 2, 3, 4, 19]), np.array([5.0, 6, 7, 8, 20])]
    d = data.Interactions(seqs, 10, times)
    sp = data.chronological_split(d, ratios=(0.8, 0.1, 0.1))
    assert [s.tolist() for s in sp.train] == [[1, 2, 3, 4], [6, 7, 8, 9]]
    assert sp.valid.targets.tolist() == [5] and sp.valid.histories[0].tolist() == [1, 2, 3, 4]
    assert sp.test.targets.tolist() == [10] and sp.test.histories[0].tolist() == [6, 7, 8, 9]
    with pytest.raises(ValueError, match="needs timestamps"):
        data.chronological_split(data.Interactions(seqs, 10))


def test_beauty_statistics():
    path = DATA / "Beauty.txt"
    if not path.exists():
        pytest.skip(f"{path} is not present")
    d = data.read_interactions(path)
    assert d.stats()["users"] == 22363 and d.num_items == 12101 and d.num_interactions == 198502
