"""Item feature loaders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.graph.conftest import DATA
from tfllmer_fast.app import features


def _write(tmp_path, payload):
    path = tmp_path / "attrs.json"
    path.write_text(json.dumps(payload))
    return path


def test_multi_hot(tmp_path):
    path = _write(tmp_path, {"1": [10, 30], "2": [30], "3": []})
    m = features.attribute_matrix(path, 3)
    np.testing.assert_array_equal(m, [[0, 0], [1, 1], [0, 1], [0, 0]])
    assert m.dtype == np.float32


def test_tfidf_rows_are_unit_and_rare_attributes_weigh_more(tmp_path):
    path = _write(tmp_path, {"1": [10, 30], "2": [30], "3": [30]})
    m = features.attribute_matrix(path, 3, tfidf=True)
    np.testing.assert_allclose(np.linalg.norm(m[1:], axis=1), 1.0, rtol=1e-6)
    assert m[1, 0] > m[1, 1]


def test_missing_item_is_named(tmp_path):
    path = _write(tmp_path, {"1": [1], "3": [2]})
    with pytest.raises(ValueError, match="has no entry for item 2"):
        features.attribute_matrix(path, 3)
    zero = features.attribute_matrix(path, 3, missing="zero")
    assert (zero[2] == 0).all()
    mean = features.attribute_matrix(path, 3, missing="mean")
    np.testing.assert_allclose(mean[2], [0.5, 0.5])


@pytest.mark.parametrize("payload, message", [("[1, 2]", "must map item ids"), ("{bad", "is not valid JSON"),
                                              ('{"x": [1]}', "is not an item id")])
def test_malformed_attribute_files(tmp_path, payload, message):
    path = tmp_path / "bad.json"
    path.write_text(payload)
    with pytest.raises(ValueError, match=message):
        features.attribute_matrix(path, 3)


def test_real_attribute_file():
    path = DATA / "Beauty_item2attributes.json"
    if not path.exists():
        pytest.skip(f"{path} is not present")
    m = features.attribute_matrix(path, 12101)
    assert m.shape[0] == 12102 and (m[0] == 0).all() and (m[1:].sum(1) > 0).all()


def test_load_matrix(tmp_path):
    x = np.random.default_rng(0).normal(size=(5, 3))
    np.save(tmp_path / "f.npy", x)
    torch.save(torch.from_numpy(x), tmp_path / "f.pt")
    np.testing.assert_allclose(features.load_matrix(tmp_path / "f.npy", 4), x.astype(np.float32))
    np.testing.assert_allclose(features.load_matrix(tmp_path / "f.pt"), x.astype(np.float32))
    with pytest.raises(ValueError, match="has 5 rows, expected num_items \\+ 1 = 4"):
        features.load_matrix(tmp_path / "f.npy", 3)
    with pytest.raises(ValueError, match="must be .npy or .pt"):
        features.load_matrix(tmp_path / "f.txt")
