"""What the client adapters share: importing the client with a usable error,
the default head options, seen-item lists in the CSR form the ranking ops
take, and reading S3-Rec interaction files."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..options import HeadOptions

PLAIN_CE = HeadOptions(normalize_items=False)
"""The clients' own cross-entropy: logits ``h @ E.T``, nothing normalized."""


def require(module: str, install: str):
    """Import the client ``module`` or fail with the command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"tfllmer_fast.integrations needs {module!r}: {install}") from err


def exclusions_from_pairs(rows: Tensor, items: Tensor, num_rows: int) -> tuple[Tensor, Tensor]:
    """The CSR pair ``(indptr (num_rows + 1,), items)`` of (row, item) pairs in
    any order (repeats allowed), on the pairs' device."""
    rows = torch.as_tensor(rows).long().flatten()
    items = torch.as_tensor(items, device=rows.device).long().flatten()
    if rows.shape != items.shape:
        raise ValueError(f"rows and items must pair up, got {tuple(rows.shape)} and {tuple(items.shape)}")
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= num_rows):
        raise ValueError(f"rows must lie in [0, {num_rows})")
    order = torch.argsort(rows, stable=True)
    counts = torch.bincount(rows, minlength=num_rows)
    indptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    return indptr, items[order]


def exclusions_from_scipy_csr(matrix, rows=None, device=None) -> tuple[Tensor, Tensor]:
    """The CSR pair of a SciPy sparse (users x items) matrix's nonzeros, for
    the rows ``rows`` (all by default) in that order."""
    matrix = matrix.tocsr()
    if rows is not None:
        matrix = matrix[rows]
    indptr = torch.from_numpy(matrix.indptr.astype("int64"))
    items = torch.from_numpy(matrix.indices.astype("int64"))
    return indptr.to(device), items.to(device)


def read_s3rec(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An S3-Rec file (one line per user: ``user item item ...``, items in time
    order) as three (M,) int64 arrays: the user, the item and the item's
    position in its user's line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path {str(path)!r} is not a file")
    users, items, positions = [], [], []
    for line in path.read_text().splitlines():
        user, *seq = line.split() or [None]
        if user is None:
            continue
        users += [int(user)] * len(seq)
        items += [int(i) for i in seq]
        positions += range(len(seq))
    return (np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64),
            np.asarray(positions, dtype=np.int64))
