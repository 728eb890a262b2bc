"""Collaborative filtering on implicit feedback: MF and LightGCN with BPR, the
positive-only loss with DirectSpec / DirectSpec+ spectrum balancing, or the
fused full softmax; a random per-user split and full-ranking Recall@k /
NDCG@k with the training items excluded (``tfllmer-fast train-cf``)."""

from .data import CFSplit, random_split
from .evaluate import ranking_metrics
from .losses import bpr_loss, positive_only_loss
from .models import MF, LightGCN, build_cf_model
from ..config import CFConfig
from .train import CFTrainer, run_cf

__all__ = ["CFSplit", "random_split", "ranking_metrics", "bpr_loss", "positive_only_loss", "MF", "LightGCN",
           "build_cf_model", "CFConfig", "CFTrainer", "run_cf"]
