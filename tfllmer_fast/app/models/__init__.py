"""Sequential backbones ending in the shared normalized softmax head."""

from .base import SequentialRecommender, left_pad
from .bert4rec import BERT4Rec
from .gru4rec import GRU4Rec
from .sasrec import SASRec

MODELS = {"sasrec": SASRec, "gru4rec": GRU4Rec, "bert4rec": BERT4Rec}


def build_model(name: str, num_items: int, **options) -> SequentialRecommender:
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    return MODELS[name](num_items, **options)


__all__ = ["SequentialRecommender", "SASRec", "GRU4Rec", "BERT4Rec", "MODELS", "build_model", "left_pad"]
