"""The whole job: interactions -> split -> item embeddings -> training -> metrics."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from . import data as data_mod
from .features import attribute_matrix, load_matrix
from .graph import cooccurrence, pca, rec_pca
from .train import TrainConfig, Trainer

log = logging.getLogger(__name__)
INITS = ("random", "pca", "recpca")


def load_features(path, num_items: int, item_ids=None) -> np.ndarray:
    """(num_items + 1, D) features from a ``.npy``/``.pt`` matrix or an
    ``item2attributes.json`` file (keyed by original item ids when the data was
    remapped)."""
    if Path(path).suffix == ".json":
        return attribute_matrix(path, num_items, missing="zero", item_ids=item_ids)
    return load_matrix(path, num_items)


def item_embeddings(init: str, split, features, dim: int, *, beta: float = 0.3, top_k: int = 20):
    """(num_items + 1, dim) initial item table (row 0 padding) or None for random."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if init == "random":
        return None
    if features is None:
        raise ValueError(f"init={init!r} needs item features (--features)")
    body = features[1:]
    if init == "pca":
        emb = pca(body, dim)
    else:
        graph = cooccurrence(split.train, split.num_items, top_k=top_k)
        if hasattr(graph, "get"):
            graph = graph.get()
        emb = rec_pca(body, graph[1:, 1:], dim, beta=beta)
    emb = emb.get() if hasattr(emb, "get") else np.asarray(emb)
    return np.concatenate([np.zeros((1, dim), dtype=np.float32), emb])


def run(data_path, config: TrainConfig, *, features_path=None, beta: float = 0.3, split: str = "loo",
        k_core: int = 0, out_dir=None, resume: bool = False) -> dict:
    """Train and evaluate on an interaction file; writes ``out_dir/metrics.json``."""
    data = data_mod.read_interactions(data_path)
    if k_core > 1:
        data = data_mod.k_core(data, k_core)
    features = load_features(features_path, data.num_items, data.item_ids) if features_path else None
    info = {"dataset": {"path": str(data_path), "k_core": k_core},
            "features": None if features_path is None else str(features_path)}
    return run_interactions(data, config, features=features, beta=beta, split=split, out_dir=out_dir,
                            resume=resume, info=info)


def run_interactions(data, config: TrainConfig, *, features=None, beta: float = 0.3, split: str = "loo",
                     out_dir=None, resume: bool = False, info: dict | None = None) -> dict:
    """Split, initialize the items, train and evaluate; ``info`` is recorded with the results."""
    stats = data.stats()
    log.info("dataset: %s", stats)
    sp = data_mod.split(data, split)
    init = item_embeddings(config.init, sp, features, config.dim, beta=beta)
    trainer = Trainer(sp, config, item_init=init, out_dir=out_dir)
    if resume:
        ckpt = Path(out_dir) / "checkpoint.pt"
        if not ckpt.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt}")
        trainer.load_checkpoint(ckpt)
    info = dict(info or {})
    info["dataset"] = {**stats, **info.get("dataset", {})}
    info["beta"] = beta if config.init == "recpca" else None
    return trainer.fit(info)


def config_for(**overrides) -> TrainConfig:
    return replace(TrainConfig(), **{k: v for k, v in overrides.items() if v is not None})
