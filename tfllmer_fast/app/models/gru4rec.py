"""GRU4Rec (Hidasi et al., ICLR 2016) as a sequential backbone."""

from __future__ import annotations

from torch import Tensor, nn

from .base import SequentialRecommender


class GRU4Rec(SequentialRecommender):
    """Embedding dropout then a GRU whose states are the hidden states. Defaults
    follow RecBole's GRU4Rec: one layer, embedding dropout 0.3."""

    def __init__(self, num_items: int, dim: int = 64, max_len: int = 50, *, num_layers: int = 1,
                 dropout: float = 0.3, **head_options):
        super().__init__(num_items, dim, max_len, **head_options)
        self.dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(dim, dim, num_layers=num_layers, batch_first=True)

    def encode(self, seq: Tensor) -> Tensor:
        out, _ = self.gru(self.dropout(self.embed_items(seq)))
        return out
