"""Plain torch / NumPy reference implementations: the CPU path, the test oracle
and the benchmark baseline."""

from .normalized_ce import normalized_ce_rows, normalized_logits, plain_normalized_ce
from .ranking import count_against_reference, target_rank_reference, target_scores_reference, topk_reference

__all__ = [
    "normalized_ce_rows",
    "normalized_logits",
    "plain_normalized_ce",
    "target_rank_reference",
    "target_scores_reference",
    "count_against_reference",
    "topk_reference",
]
