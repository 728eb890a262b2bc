"""BERT4Rec (Sun et al., CIKM 2019): bidirectional attention, cloze training."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from .base import PAD, SequentialRecommender, left_pad

MASK = -1  # marks masked input positions; replaced by the learned mask vector


class BERT4Rec(SequentialRecommender):
    """Training masks each item with probability ``mask_prob`` and predicts the
    masked items; prediction appends a mask after the history. Defaults: 2
    blocks, 2 heads, mask ratio 0.2 and dropout 0.2 as in RecBole's BERT4Rec.
    The mask token has its own vector, so it is never a candidate item."""

    def __init__(self, num_items: int, dim: int = 64, max_len: int = 50, *, num_blocks: int = 2,
                 num_heads: int = 2, dropout: float = 0.2, mask_prob: float = 0.2, **head_options):
        super().__init__(num_items, dim, max_len, **head_options)
        self.mask_prob = mask_prob
        self.mask_vector = nn.Parameter(torch.randn(dim) / math.sqrt(dim))
        self.positions = nn.Embedding(max_len, dim)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, num_heads, dim_feedforward=4 * dim, dropout=dropout, batch_first=True,
                                       norm_first=True, activation="gelu")
            for _ in range(num_blocks)
        )
        self.final_norm = nn.LayerNorm(dim)

    def encode(self, seq: Tensor) -> Tensor:
        masked = seq == MASK
        x = self.embed_items(seq.clamp_min(PAD))
        x = torch.where(masked.unsqueeze(-1), self.mask_vector.to(x.dtype), x)
        x = self.dropout(x * math.sqrt(self.dim) + self.positions.weight[-seq.shape[1]:])
        padding = seq == PAD
        for block in self.blocks:
            x = block(x, src_key_padding_mask=padding)
        return self.final_norm(x)

    def make_batch(self, sequences, rng: np.random.Generator):
        inputs = left_pad(sequences, self.max_len)
        real = inputs != PAD
        chosen = real & (rng.random(inputs.shape) < self.mask_prob)
        last = np.argmax(np.cumsum(real, axis=1), axis=1)  # always at least the last item
        chosen[np.arange(len(inputs)), last] |= ~chosen.any(axis=1)
        targets = np.where(chosen, inputs, PAD)
        inputs = np.where(chosen, MASK, inputs)
        return torch.from_numpy(inputs), torch.from_numpy(targets)

    def prediction_input(self, histories) -> Tensor:
        seq = left_pad([np.append(np.asarray(h[-(self.max_len - 1):], dtype=np.int64), MASK) for h in histories],
                       self.max_len)
        return torch.from_numpy(seq)
