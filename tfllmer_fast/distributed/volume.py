"""Bytes the sharded head puts into collectives per training step.

Per rank, forward + backward of ``sharded_normalized_softmax_ce`` with B rows
in all (B / W per rank), width d, the queries in ``hidden_bytes`` per element
and their gradient in ``grad_bytes``. Counted as each rank's payload (the
tensors it hands to the collectives; ring algorithms move about as much per
link). The item table never moves: its shard's gradient stays on its rank.
"""

from __future__ import annotations


def head_collective_bytes(batch: int, dim: int, world: int, *, hidden_bytes: int = 2, grad_bytes: int = 2,
                          label_smoothing: bool = False) -> dict[str, int]:
    """Payload bytes per rank and step, by collective; ``"total"`` sums them."""
    rows = batch // world
    parts = {
        "row counts (3 all-gathers)": 3 * 8,
        "queries all-gather": rows * dim * hidden_bytes,
        "targets all-gather": rows * 8,
        "partial lse all-gather": batch * 4,
        "target logit all-reduce": batch * 4,
        "partial lse gradient (reduce-scatter; all-reduce on gloo)": world * batch * 4,
        "target logit gradient all-reduce": batch * 4,
        "query gradient (reduce-scatter; all-reduce on gloo)": world * rows * dim * grad_bytes,
    }
    if label_smoothing:
        parts["table sum all-reduce, forward and backward"] = 2 * dim * 4
    parts["total"] = sum(parts.values())
    return parts


def table_bytes(num_items: int, dim: int, element_bytes: int = 4) -> int:
    return num_items * dim * element_bytes
