"""Interaction data: readers, k-core filtering, id remapping and splits.

Item ids after remapping are 1..num_items (0 is padding), users 0..U-1, each
user's items in time order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class Interactions:
    """Per-user time-ordered sequences (item ids 1..num_items) and, when known,
    their timestamps; ``item_ids[i]`` is the original id of item i (index 0 unused)."""

    sequences: list[np.ndarray]
    num_items: int
    timestamps: list[np.ndarray] | None = None
    user_ids: np.ndarray | None = None
    item_ids: np.ndarray | None = None

    @property
    def num_users(self) -> int:
        return len(self.sequences)

    @property
    def num_interactions(self) -> int:
        return int(sum(len(s) for s in self.sequences))

    def stats(self) -> dict:
        n = self.num_interactions
        density = n / max(self.num_users * self.num_items, 1)
        return {"users": self.num_users, "items": self.num_items, "interactions": n, "density": density}


def _from_triples(users, items, times, source: str) -> Interactions:
    """Group (user, item, time) rows into time-ordered sequences (stable in file
    order for equal times) with ids remapped by sorted original id."""
    users, items = np.asarray(users), np.asarray(items)
    times = None if times is None else np.asarray(times, dtype=np.float64)
    user_ids, user_idx = np.unique(users, return_inverse=True)
    item_ids, item_idx = np.unique(items, return_inverse=True)
    keys = [np.arange(len(users)), user_idx] if times is None else [np.arange(len(users)), times, user_idx]
    order = np.lexsort(keys)
    user_idx, item_idx = user_idx[order], item_idx[order] + 1
    bounds = np.searchsorted(user_idx, np.arange(len(user_ids) + 1))
    sequences = [item_idx[bounds[u] : bounds[u + 1]].astype(np.int64) for u in range(len(user_ids))]
    if times is not None:
        times = times[order]
        stamps = [times[bounds[u] : bounds[u + 1]] for u in range(len(user_ids))]
    else:
        stamps = None
    log.info("%s: %d users, %d items, %d interactions", source, len(user_ids), len(item_ids), len(users))
    return Interactions(sequences, len(item_ids), stamps, user_ids, np.concatenate([[item_ids[0]], item_ids]))


def read_s3rec(path) -> Interactions:
    """S3-Rec text format: one user per line, ``user item item ...`` in time
    order. Original ids are kept when they are already 1..N."""
    path = Path(path)
    users, items, times = [], [], []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                values = [int(p) for p in parts]
            except ValueError:
                raise ValueError(f"{path}:{lineno}: expected integer ids, got {line.strip()[:80]!r}") from None
            if len(values) < 2:
                raise ValueError(f"{path}:{lineno}: a user line needs at least one item")
            users += [values[0]] * (len(values) - 1)
            items += values[1:]
            times += range(len(values) - 1)
    if not users:
        raise ValueError(f"{path}: no interactions")
    data = _from_triples(users, items, times, str(path))
    data.timestamps = None  # positions only: there is no global clock
    return data


def read_recbole_inter(path, min_rating: float | None = None) -> Interactions:
    """RecBole atomic ``.inter`` file: tab-separated, header ``name:type``
    columns (any order) with ``user_id``, ``item_id`` and optionally
    ``timestamp`` and ``rating``. Every interaction is kept, or with
    ``min_rating`` those rated at least that (an explicit-feedback threshold)."""
    path = Path(path)
    with open(path) as f:
        header = f.readline().rstrip("\n").split("\t")
        names = [h.split(":")[0] for h in header]
        for required in ("user_id", "item_id"):
            if required not in names:
                raise ValueError(f"{path}:1: header has no {required} column (got {header})")
        u_col, i_col = names.index("user_id"), names.index("item_id")
        t_col = names.index("timestamp") if "timestamp" in names else None
        r_col = names.index("rating") if "rating" in names else None
        if min_rating is not None and r_col is None:
            raise ValueError(f"--min-rating: {path} has no rating column (header {header})")
        users, items, times = [], [], []
        for lineno, line in enumerate(f, 2):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) != len(header):
                raise ValueError(f"{path}:{lineno}: expected {len(header)} fields, got {len(parts)}")
            if min_rating is not None:
                try:
                    if float(parts[r_col]) < min_rating:
                        continue
                except ValueError:
                    raise ValueError(f"{path}:{lineno}: rating {parts[r_col]!r} is not a number") from None
            users.append(parts[u_col])
            items.append(parts[i_col])
            if t_col is not None:
                try:
                    times.append(float(parts[t_col]))
                except ValueError:
                    raise ValueError(f"{path}:{lineno}: timestamp {parts[t_col]!r} is not a number") from None
    if not users:
        raise ValueError(f"{path}: no interactions")
    return _from_triples(users, items, times if t_col is not None else None, str(path))


def from_dataframe(df, user_col: str = "user_id", item_col: str = "item_id", time_col: str | None = "timestamp"):
    """A pandas DataFrame with user, item and (optional) timestamp columns."""
    for col in (user_col, item_col) + ((time_col,) if time_col else ()):
        if col not in df.columns:
            raise ValueError(f"DataFrame has no column {col!r} (columns: {list(df.columns)})")
    times = df[time_col].to_numpy() if time_col else None
    return _from_triples(df[user_col].to_numpy(), df[item_col].to_numpy(), times, "DataFrame")


def read_interactions(path, min_rating: float | None = None) -> Interactions:
    """Dispatch on the file name: ``.inter`` (RecBole) or S3-Rec text."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"interaction file {path} does not exist")
    if path.suffix == ".inter":
        return read_recbole_inter(path, min_rating)
    if min_rating is not None:
        raise ValueError(f"--min-rating: {path} is an S3-Rec file, which has no ratings")
    return read_s3rec(path)


def k_core(data: Interactions, k: int) -> Interactions:
    """Iteratively drop users and items with fewer than ``k`` interactions, then
    remap item ids to 1..N (in original order); logs what was removed."""
    if k <= 1:
        return data
    lengths = np.array([len(s) for s in data.sequences])
    user_of = np.repeat(np.arange(len(lengths)), lengths)
    items = np.concatenate(data.sequences) if lengths.sum() else np.zeros(0, np.int64)
    keep = np.ones(items.size, dtype=bool)
    while True:
        item_count = np.bincount(items[keep], minlength=data.num_items + 1)
        user_count = np.bincount(user_of[keep], minlength=len(lengths))
        new_keep = keep & (item_count[items] >= k) & (user_count[user_of] >= k)
        if (new_keep == keep).all():
            break
        keep = new_keep
    kept_items = np.unique(items[keep])
    remap = np.zeros(data.num_items + 1, dtype=np.int64)
    remap[kept_items] = np.arange(1, kept_items.size + 1)
    kept_users = np.unique(user_of[keep])
    starts = np.concatenate([[0], np.cumsum(lengths)])
    sequences, stamps = [], []
    for u in kept_users:
        mask = keep[starts[u] : starts[u + 1]]
        sequences.append(remap[data.sequences[u][mask]])
        if data.timestamps is not None:
            stamps.append(data.timestamps[u][mask])
    log.info("%d-core: kept %d/%d users, %d/%d items, %d/%d interactions", k, len(kept_users), len(lengths),
             kept_items.size, data.num_items, int(keep.sum()), items.size)
    return Interactions(
        sequences, int(kept_items.size), stamps if data.timestamps is not None else None,
        None if data.user_ids is None else data.user_ids[kept_users],
        None if data.item_ids is None else np.concatenate([[0], data.item_ids[kept_items]]),
    )


@dataclass
class EvalSet:
    """Evaluation examples: predict ``targets[j]`` from ``histories[j]`` (all of
    that user's earlier items, oldest first)."""

    histories: list[np.ndarray]
    targets: np.ndarray


@dataclass
class Split:
    train: list[np.ndarray]
    valid: EvalSet
    test: EvalSet
    num_items: int
    protocol: str
    counts: dict = field(default_factory=dict)


def leave_one_out(data: Interactions) -> Split:
    """Last item is the test target, second last the validation target; users
    with fewer than 3 items only train."""
    train, valid_h, valid_t, test_h, test_t = [], [], [], [], []
    short = 0
    for seq in data.sequences:
        if len(seq) < 3:
            train.append(seq)
            short += 1
            continue
        train.append(seq[:-2])
        valid_h.append(seq[:-2])
        valid_t.append(seq[-2])
        test_h.append(seq[:-1])
        test_t.append(seq[-1])
    counts = {"train_users": len(train), "valid": len(valid_t), "test": len(test_t), "train_only_users": short}
    return Split(train, EvalSet(valid_h, np.array(valid_t, dtype=np.int64)),
                 EvalSet(test_h, np.array(test_t, dtype=np.int64)), data.num_items, "leave_one_out", counts)


def chronological_split(data: Interactions, ratios=(0.8, 0.1, 0.1)) -> Split:
    """The paper's 8:1:1 split by global time: interactions up to the 80% time
    quantile train, the next 10% validate, the rest test; each evaluated
    interaction is predicted from all of that user's earlier interactions.
    Evaluated interactions with no earlier history are skipped (counted)."""
    if data.timestamps is None:
        raise ValueError("the chronological split needs timestamps (S3-Rec files have none; use leave-one-out)")
    all_times = np.concatenate(data.timestamps)
    cut_valid, cut_test = np.quantile(all_times, [ratios[0], ratios[0] + ratios[1]])
    train, valid, test = [], EvalSet([], []), EvalSet([], [])
    skipped = 0
    for seq, times in zip(data.sequences, data.timestamps):
        train_part = seq[times <= cut_valid]
        if len(train_part):
            train.append(train_part)
        for pos in np.nonzero(times > cut_valid)[0]:
            if pos == 0:
                skipped += 1
                continue
            target = valid if times[pos] <= cut_test else test
            target.histories.append(seq[:pos])
            target.targets.append(seq[pos])
    valid.targets = np.array(valid.targets, dtype=np.int64)
    test.targets = np.array(test.targets, dtype=np.int64)
    counts = {"train_users": len(train), "valid": len(valid.targets), "test": len(test.targets),
              "skipped_no_history": skipped}
    return Split(train, valid, test, data.num_items, "chronological_8_1_1", counts)


def split(data: Interactions, protocol: str) -> Split:
    if protocol in ("loo", "leave_one_out"):
        return leave_one_out(data)
    if protocol in ("time", "chronological"):
        return chronological_split(data)
    raise ValueError(f"split must be 'loo' or 'time', got {protocol!r}")
