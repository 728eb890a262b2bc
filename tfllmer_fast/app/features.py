"""Item feature matrices: saved arrays and attribute files (text embeddings: ``embed``).

Every loader returns a float32 (num_items + 1, D) NumPy array whose row 0 is
the padding item (zeros), so row i belongs to item i as in the data files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

MISSING_POLICIES = ("error", "zero", "mean")


def load_matrix(path, num_items: int | None = None) -> np.ndarray:
    """A ``.npy`` or ``.pt`` matrix (N, D) as float32; with ``num_items`` its row
    count must be num_items + 1 (row 0 for padding)."""
    path = Path(path)
    if path.suffix == ".npy":
        matrix = np.load(path)
    elif path.suffix in (".pt", ".pth"):
        import torch

        matrix = torch.load(path, map_location="cpu", weights_only=True)
        matrix = matrix.float().numpy() if hasattr(matrix, "numpy") else np.asarray(matrix)
    else:
        raise ValueError(f"features file {path} must be .npy or .pt")
    if matrix.ndim != 2:
        raise ValueError(f"features file {path} holds shape {matrix.shape}, expected (N, D)")
    if num_items is not None and matrix.shape[0] != num_items + 1:
        raise ValueError(
            f"features file {path} has {matrix.shape[0]} rows, expected num_items + 1 = {num_items + 1} "
            "(row 0 is the padding item)"
        )
    if not np.isfinite(matrix).all():
        raise ValueError(f"features file {path} contains NaN or Inf")
    return matrix.astype(np.float32, copy=False)


def _fill_missing(matrix: np.ndarray, present: np.ndarray, missing: str, source: str) -> np.ndarray:
    absent = np.nonzero(~present[1:])[0] + 1
    if absent.size == 0:
        return matrix
    if missing == "error":
        raise ValueError(
            f"{source} has no entry for item {int(absent[0])} ({absent.size} items missing); "
            f"pass missing='zero' or missing='mean' to fill them"
        )
    log.info("%s: filling %d missing items with %s rows", source, absent.size, missing)
    if missing == "mean":
        matrix[absent] = matrix[1:][present[1:]].mean(axis=0)
    return matrix


def attribute_matrix(path, num_items: int, *, tfidf: bool = False, missing: str = "error",
                     item_ids=None) -> np.ndarray:
    """Multi-hot (or TF-IDF weighted, rows L2-normalized) matrix from an
    ``item2attributes.json`` file ``{"item_id": [attribute_id, ...]}``; one column
    per attribute id seen, in increasing id order. Items 1..num_items; when the
    data was remapped, ``item_ids[i]`` is the file's id of item i. A missing item
    is an error naming it unless ``missing`` is ``"zero"`` or ``"mean"``."""
    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing must be one of {MISSING_POLICIES}, got {missing!r}")
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must map item ids to lists of attribute ids")
    new_id = None if item_ids is None else {str(old): new for new, old in enumerate(item_ids) if new > 0}
    rows, cols = [], []
    present = np.zeros(num_items + 1, dtype=bool)
    for key, attrs in raw.items():
        try:
            item = int(key) if new_id is None else new_id.get(str(key), -1)
            attrs = [int(a) for a in attrs]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: entry {key!r} is not an item id with a list of integer attributes") from exc
        if not 1 <= item <= num_items:
            continue  # items filtered out of the interaction data
        present[item] = True
        rows += [item] * len(attrs)
        cols += attrs
    attr_ids, col_index = np.unique(np.asarray(cols, dtype=np.int64), return_inverse=True)
    matrix = np.zeros((num_items + 1, attr_ids.size), dtype=np.float32)
    matrix[np.asarray(rows, dtype=np.int64), col_index] = 1.0
    if tfidf:
        df = matrix[1:].sum(axis=0)
        idf = np.log((1.0 + num_items) / (1.0 + df)) + 1.0
        matrix *= idf[None, :].astype(np.float32)
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        matrix = np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)
    return _fill_missing(matrix, present, missing, str(path))
