"""SASRec (Kang & McAuley, ICDM 2018): causal self-attention over the sequence."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import PAD, SequentialRecommender


class SASRec(SequentialRecommender):
    """Defaults: 2 blocks and max length 50 as in the SASRec paper; 2 heads and
    hidden 64 as in RecBole's SASRec and the S3-Rec comparison; dropout 0.2 (the
    SASRec paper used 0.5 on Amazon; docs/defaults.md has the comparison).
    Pre-LayerNorm blocks,
    learned positions, padding keys masked and padding positions zeroed after
    every block (the paper's timeline mask)."""

    def __init__(self, num_items: int, dim: int = 64, max_len: int = 50, *, num_blocks: int = 2,
                 num_heads: int = 2, dropout: float = 0.2, **head_options):
        super().__init__(num_items, dim, max_len, **head_options)
        self.positions = nn.Embedding(max_len, dim)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, num_heads, dim_feedforward=dim, dropout=dropout, batch_first=True,
                                       norm_first=True)
            for _ in range(num_blocks)
        )
        self.final_norm = nn.LayerNorm(dim)
        self.register_buffer("causal", torch.triu(torch.full((max_len, max_len), float("-inf")), 1), persistent=False)

    def encode(self, seq: Tensor) -> Tensor:
        length = seq.shape[1]
        padding = seq == PAD
        keep = (~padding).unsqueeze(-1).to(self.item_table.dtype)
        x = self.embed_items(seq) * math.sqrt(self.dim) + self.positions.weight[-length:]
        x = self.dropout(x) * keep
        mask = self._attention_mask(padding)
        for block in self.blocks:
            x = block(x, src_mask=mask) * keep
        return self.final_norm(x)

    def _attention_mask(self, padding: Tensor) -> Tensor:
        """(B * heads, L, L) additive mask: causal, and real positions never attend
        to padding keys (as in the SASRec and RecBole code), so a real position's
        output does not depend on how much padding precedes it. Padding queries
        keep their own key: a fully masked row would give NaN."""
        length = padding.shape[1]
        real_query = ~padding.unsqueeze(-1)
        blocked = padding.unsqueeze(1) & real_query
        mask = self.causal[:length, :length].masked_fill(blocked, float("-inf"))
        return mask.repeat_interleave(self.blocks[0].self_attn.num_heads, dim=0)
