"""The whole job: interactions -> split -> item embeddings -> training -> metrics."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import torch.distributed as dist

from . import data as data_mod
from . import files
from .config import RunConfig, load_saved, require_features
from ..distributed import runtime
from .embed import EmbedConfig, embed_items, load_aligned, manifest_path
from .features import attribute_matrix, load_matrix
from .item_text import is_item_table
from ..graph import cooccurrence, pca, rec_pca
from .train import Trainer

log = logging.getLogger(__name__)


def load_features(path, num_items: int, item_ids=None, *, embed_model: str | None = None,
                  template: str | None = None, cache_dir=None) -> np.ndarray:
    """(num_items + 1, D) features in the data's item order (row 0 padding):
    a ``.npy`` written by ``tfllmer-fast embed`` (rows matched by the item ids
    of its manifest), another ``.npy``/``.pt`` matrix already in that order, an
    ``item2attributes.json`` file (keyed by original item ids when the data was
    remapped), or an item table whose texts ``embed_model`` encodes first
    (cached in ``cache_dir``, resumable)."""
    path = Path(path)
    if is_item_table(path):
        if embed_model is None:
            raise ValueError(f"--features {path} is an item table: give --embed-model to embed its texts")
        out = Path(cache_dir or tempfile.mkdtemp()) / "item_embeddings.npy"
        manifest = embed_items(path, EmbedConfig(model=embed_model, template=template), out)
        log.info("%s: %d items x %d dims from %s", out, manifest["count"], manifest["dims"], manifest["model"])
        path = out
    if path.suffix == ".json":
        return attribute_matrix(path, num_items, missing="zero", item_ids=item_ids)
    if path.suffix == ".npy" and manifest_path(path).exists():
        return load_aligned(path, item_ids, num_items)
    return load_matrix(path, num_items)


def item_embeddings(init: str, split, features, dim: int, *, beta: float = 0.3, top_k: int = 20):
    """(num_items + 1, dim) initial item table (row 0 padding) or None for random.
    Features narrower than the table (19 genres for a 64-wide table) give all
    their components, and the remaining columns start at zero (logged)."""
    require_features(init, features)
    if init == "random":
        return None
    body = features[1:]
    k = min(dim, *body.shape)
    if k < dim:
        log.warning("init %s: the features give %d components for a %d-wide table; the other %d columns start "
                    "at zero", init, k, dim, dim - k)
    if init == "pca":
        emb = pca(body, k)
    else:
        graph = cooccurrence(split.train, split.num_items, top_k=top_k)
        if hasattr(graph, "get"):
            graph = graph.get()
        emb = rec_pca(body, graph[1:, 1:], k, beta=beta)
    emb = emb.get() if hasattr(emb, "get") else np.asarray(emb)
    table = np.zeros((emb.shape[0] + 1, dim), dtype=np.float32)
    table[1:, :k] = emb
    return table


def run(config: RunConfig, *, data=None, features=None, out_dir=None, resume: bool = False) -> dict:
    """Train and evaluate as ``config`` says; returns the metrics (also written
    to ``out_dir/metrics.json``). ``data`` (``Interactions``) and ``features``
    (an (N + 1, D) array) replace reading ``config.data.path`` and
    ``config.items.features``. With ``resume`` the run continues from
    ``out_dir/checkpoint.pt`` and must have the settings saved there (epochs,
    patience and device may change)."""
    config.validate()
    if resume:
        _check_resume(config, out_dir)
    if data is None:
        data = data_mod.read_interactions(config.data.path, config.data.min_rating)
    if config.data.k_core > 1:
        data = data_mod.k_core(data, config.data.k_core)
    if features is None and config.items.features:
        features = load_features(config.items.features, data.num_items, data.item_ids,
                                 embed_model=config.items.embed_model, template=config.items.template,
                                 cache_dir=out_dir)
    stats = data.stats()
    log.info("dataset: %s", stats)
    sp = data_mod.split(data, config.data.split)
    rank, world = runtime.rank_world()
    # The item initialization is computed once, on rank 0; every rank takes
    # its own rows of it.
    init = [item_embeddings(config.items.init, sp, features, config.train.dim, beta=config.items.beta,
                            top_k=config.items.top_k) if rank == 0 else None]
    if world > 1:
        dist.broadcast_object_list(init, src=0)
    if out_dir and rank == 0:
        config.save(out_dir)
    trainer = Trainer(sp, config.train, item_init=init[0], out_dir=out_dir)
    if resume:
        trainer.load_checkpoint(trainer.checkpoint_path)
    info = {"dataset": {**stats, "path": config.data.path, "k_core": config.data.k_core},
            "features": config.items.features, "beta": config.items.beta if config.items.init == "recpca" else None,
            "config": config.to_dict()}
    return trainer.fit(info)


def _check_resume(config: RunConfig, out_dir) -> None:
    rank, world = runtime.rank_world()
    name = files.per_rank("checkpoint.pt", rank, world)
    ckpt = Path(out_dir or ".") / name
    if not out_dir or not ckpt.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {ckpt} (a run resumes with the number of processes "
                                "it was started with)")
    saved = load_saved(out_dir)
    if saved is None:
        raise ValueError(f"--resume: {out_dir} has a checkpoint but no config.json to check the settings against")
    changed = config.differences(saved)
    if changed:
        raise ValueError(f"--resume: settings differ from the run saved in {out_dir} ({'; '.join(changed)}); "
                         "resume with the same settings or train into a new --out")
