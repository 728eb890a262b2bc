"""Plain torch / NumPy reference implementations: the CPU path, the test oracle
and the benchmark baseline."""

from .normalized_ce import normalized_ce_rows, normalized_logits, plain_normalized_ce

__all__ = ["normalized_ce_rows", "normalized_logits", "plain_normalized_ce"]
