"""Training loop for the collaborative-filtering side: one epoch is every
training interaction once (shuffled), early stopping on validation NDCG@10,
the best model tested; at every validation the effective rank of both tables."""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .. import diagnostics as dg
from ..limits import bounded, validate_fields
from ..graph import UserItemGraph
from ..graph.adjacency import sparse_to_backend
from ..graph.array_module import cupy_available
from ..longtail import LongTailSettings, head_mask, item_counts
from ..ops.normalized_ce import normalized_softmax_ce
from ..optim import SAMSettings, optimizer_step, sharpness_aware
from ..options import DEFAULT_TEMPERATURE, HeadOptions
from ..spectral import direct_spec, direct_spec_plus, distance_temperatures
from .data import CFSplit
from .evaluate import ranking_metrics
from .losses import bpr_loss, positive_only_loss
from .models import build_cf_model

log = logging.getLogger(__name__)
LOSSES = ("bpr", "directspec", "directspec+", "softmax")
# The balancing step when --alpha is not given. Plain DirectSpec's step is
# alpha / B times Hn Hn^T Hn, whose singular values are S^3 with S^2 about B / d
# in a balanced batch, so at 0.5 it barely moves anything short of collapse:
# on Beauty (seed 0, validation NDCG@10) 0.5 gave 0.033 and its effective rank
# fell from 64 to 54; 2 gave 0.046 and 8 gave 0.045. The best step depends on
# the data: Yelp peaked at epoch 5 below BPR at 2 and needed 8 (README).
# DirectSpec+'s softmax rows sum to one, and 0.5 is where it does well.
DEFAULT_ALPHA = {"directspec": 2.0, "directspec+": 0.5}


@dataclass
class CFConfig(SAMSettings, LongTailSettings):
    """One CF run. ``loss``: BPR with one uniform negative per pair; the
    positive-only loss on DirectSpec / DirectSpec+ balanced batch vectors
    (``alpha``, by default ``DEFAULT_ALPHA`` of the loss; DirectSpec+'s
    temperatures ``tau_0`` for user or item pairs within ``max_distance`` on
    the training graph, ``tau_1`` otherwise;
    plain DirectSpec takes ``alpha / B`` for a batch of B, see ``_loss``); or
    the full softmax over all items through the fused head (normalized item
    rows, the user vector's norm as inverse temperature). Scores at
    evaluation are raw dot products, except for the softmax, which ranks as
    its head scores. Defaults: d = 64, LightGCN with 3 layers, and DirectSpec+
    at K = 2, tau_0 = 3.5, tau_1 = 4 (the paper's best on Yelp). README lists
    where this differs from the authors' code (their optimizer, rescaling and
    Recall convention)."""

    model: str = bounded("mf", choices=("mf", "lightgcn"))
    loss: str = bounded("bpr", choices=LOSSES)
    dim: int = bounded(64, 1)
    layers: int = bounded(3, 1)
    batch_size: int = bounded(2048, 1)
    lr: float = bounded(1e-3, 0.0)
    weight_decay: float = bounded(0.0, 0.0)
    epochs: int = bounded(200, 1)
    patience: int = bounded(10, 1)
    eval_every: int = bounded(1, 1)  # validate every this many epochs (patience still counts epochs)
    alpha: float | None = bounded(None, 0.0)
    tau_0: float = bounded(3.5, 0.0)
    tau_1: float = bounded(4.0, 0.0)
    max_distance: int = bounded(2, 0)
    temperature: float = bounded(DEFAULT_TEMPERATURE, 1e-6)
    test_share: float = bounded(0.2, 0.0, 0.99)
    valid_share: float = bounded(0.1, 0.0, 0.99)
    seed: int = 0
    device: str = "cpu"
    eval_batch_size: int = bounded(2048, 1)

    def validate(self) -> CFConfig:
        validate_fields(self)
        if self.tau_0 > self.tau_1:
            raise ValueError(f"tau_0 must be <= tau_1, got {self.tau_0} > {self.tau_1}")
        if self.eval_every > self.patience:
            raise ValueError(f"eval_every ({self.eval_every}) must be <= patience ({self.patience}): early stopping "
                             "needs a validation within every patience window")
        if self.alpha is not None and self.loss not in DEFAULT_ALPHA:
            raise ValueError(f"alpha is the DirectSpec step and does not apply to loss {self.loss!r}")
        return self

    @property
    def balance_step(self) -> float | None:
        """The DirectSpec / DirectSpec+ step: ``alpha``, or the loss's default;
        None for the losses that take no step."""
        return self.alpha if self.alpha is not None else DEFAULT_ALPHA.get(self.loss)

    @property
    def scoring(self) -> HeadOptions:
        if self.loss == "softmax":
            return HeadOptions.make(temperature=self.temperature, normalize_items=True)
        return HeadOptions.make(normalize_items=False)


class CFTrainer:
    def __init__(self, split: CFSplit, config: CFConfig, *, out_dir=None):
        self.config = config.validate()
        self.split = split
        self.out_dir = Path(out_dir) if out_dir else None
        torch.manual_seed(config.seed)
        matrix = split.matrix()
        self.model = build_cf_model(config.model, split.num_users, split.num_items, dim=config.dim,
                                    layers=config.layers, interactions=matrix).to(config.device)
        # DirectSpec+'s graph distances run where the batch is: cupyx for CUDA batches.
        on_gpu = torch.device(config.device).type == "cuda" and cupy_available()
        self.graph = UserItemGraph(sparse_to_backend(matrix, "cupy") if on_gpu else matrix)
        counts = item_counts(split.train, split.num_items)
        self.head = head_mask(counts, config.head_share)
        adam = torch.optim.Adam(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.optimizer = sharpness_aware(adam, config.sam, rho=config.sam_rho, exponent=config.sam_exponent,
                                         item_counts=counts)
        self.users, self.items = split.pairs()
        self.known_valid = split.train
        self.known_test = [np.union1d(t, v) for t, v in zip(split.train, split.valid)]
        self.history: list[dict] = []

    def _loss(self, users, items, rng_negatives, row_weight=None):
        cfg = self.config
        user_table, item_table = self.model.embeddings()
        weight = None if row_weight is None else row_weight(items)
        if cfg.loss == "softmax":
            return normalized_softmax_ce(user_table[users], item_table[1:], items - 1, weight=weight,
                                         **cfg.scoring._asdict())
        u, i = user_table[users], item_table[items]
        if cfg.loss == "bpr":
            return bpr_loss(u, i, item_table[rng_negatives], weight)
        if cfg.loss == "directspec":
            # Hn Hn^T's rows sum to up to B where DirectSpec+'s softmax rows sum to
            # one. With alpha / B a direction holding a share f of the batch's
            # energy (S^2 = f B) shrinks by the factor 1 - alpha f, whatever B is;
            # at the default 2 only a direction holding over half of it would flip.
            a = cfg.balance_step / len(users)
            return positive_only_loss(direct_spec(u, a), direct_spec(i, a), weight)
        gammas = [distance_temperatures(self.graph, ids, max_distance=cfg.max_distance, tau_0=cfg.tau_0,
                                        tau_1=cfg.tau_1, side=side, device=u.device)
                  for ids, side in ((users, "users"), (items, "items"))]
        return positive_only_loss(direct_spec_plus(u, cfg.balance_step, gammas[0]),
                                  direct_spec_plus(i, cfg.balance_step, gammas[1]), weight)

    def train_epoch(self, epoch: int) -> dict:
        cfg = self.config
        self.model.train()
        rng = np.random.default_rng([cfg.seed, epoch])
        order = rng.permutation(len(self.items))
        negatives = rng.integers(1, self.split.num_items + 1, size=len(order))
        losses = []
        device = torch.device(cfg.device)
        for start in range(0, len(order), cfg.batch_size):
            rows = order[start : start + cfg.batch_size]
            users = torch.as_tensor(self.users[rows], device=device)
            items = torch.as_tensor(self.items[rows], device=device)
            neg = torch.as_tensor(negatives[start : start + len(rows)], device=device)

            def forward_backward(row_weight=None):
                loss = self._loss(users, items, neg, row_weight)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                return loss

            losses.append(float(optimizer_step(self.optimizer, forward_backward).detach()))
        return {"loss": float(np.mean(losses))}

    @torch.no_grad()
    def evaluate(self, part: str) -> dict:
        self.model.eval()
        users, items = self.model.embeddings()
        heldout = self.split.valid if part == "valid" else self.split.test
        known = self.known_valid if part == "valid" else self.known_test
        return ranking_metrics(users, items, heldout, known, options=self.config.scoring, head=self.head,
                               batch_size=self.config.eval_batch_size)

    @torch.no_grad()
    def spectrum(self) -> dict:
        users, items = self.model.embeddings()
        return {"erank": dg.erank(items[1:]), "erank_users": dg.erank(users)}

    def fit(self, info: dict | None = None) -> dict:
        cfg = self.config
        best = {"NDCG@10": -1.0, "epoch": 0, "state": None}
        self._write({"epoch": 0, "diagnostics": self.spectrum()})
        epoch = 0
        while epoch < cfg.epochs and epoch - best["epoch"] < cfg.patience:
            tic = time.perf_counter()
            row = self.train_epoch(epoch)
            row["train_s"] = time.perf_counter() - tic
            epoch += 1
            row["epoch"] = epoch
            if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
                tic = time.perf_counter()
                row["valid"] = self.evaluate("valid")
                row["valid_s"] = time.perf_counter() - tic
                row["diagnostics"] = self.spectrum()
                log.info("epoch %d loss %.4f valid NDCG@10 %.4f erank %.1f", epoch, row["loss"],
                         row["valid"]["NDCG@10"], row["diagnostics"]["erank"])
                if row["valid"]["NDCG@10"] > best["NDCG@10"]:
                    best = {"NDCG@10": row["valid"]["NDCG@10"], "epoch": epoch,
                            "state": copy.deepcopy(self.model.state_dict())}
            self.history.append(row)
            self._write(row)
        self.model.load_state_dict(best["state"])
        result = {
            "valid": self.history[best["epoch"] - 1]["valid"], "test": self.evaluate("test"),
            "best_epoch": best["epoch"], "epochs_run": epoch,
            "train_seconds": sum(r["train_s"] + r.get("valid_s", 0.0) for r in self.history),
            "split": self.split.counts, "config": asdict(cfg), "alpha": cfg.balance_step, **(info or {}),
        }
        if self.out_dir:
            (self.out_dir / "metrics.json").write_text(json.dumps(result, indent=2))
        return result

    def _write(self, row: dict) -> None:
        if self.out_dir:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / "epochs.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")


def run_cf(config: CFConfig, data, *, out_dir=None) -> dict:
    """Split ``data`` (``Interactions``) at random per user and train as ``config`` says."""
    from .data import random_split

    config.validate()
    split = random_split(data, test=config.test_share, valid=config.valid_share, seed=config.seed)
    if out_dir and (Path(out_dir) / "epochs.jsonl").exists():
        (Path(out_dir) / "epochs.jsonl").unlink()  # a fresh run: no resume on this side
    return CFTrainer(split, config, out_dir=out_dir).fit({"dataset": data.stats()})
