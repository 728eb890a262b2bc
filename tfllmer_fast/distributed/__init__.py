"""Catalog parallelism over torch.distributed: the item table sharded by rows.

Every rank runs a data-parallel backbone on its own batch and owns a slice of
the items; the head, its backward and full ranking exchange only per-row
values (B floats, B x k candidates) and the queries, never logits or table
rows. NCCL on GPUs, gloo on CPU.
"""

from . import runtime
from ._comm import shard_range
from .sharded_ce import ShardedNormalizedSoftmaxHead, sharded_normalized_softmax_ce
from .sharded_ranking import sharded_target_rank, sharded_topk_scores

__all__ = [
    "ShardedNormalizedSoftmaxHead",
    "runtime",
    "shard_range",
    "sharded_normalized_softmax_ce",
    "sharded_target_rank",
    "sharded_topk_scores",
]
