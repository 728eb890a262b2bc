"""The collaborative-filtering trainer: one epoch is every training
interaction once (shuffled); validation every ``eval_every`` epochs with the
effective rank of both tables; early stopping, the best state and the run
files are ``loop.FitLoop``'s, as for the sequential trainer."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch

from .. import diagnostics as dg
from ..config import CFConfig
from ...graph import UserItemGraph, cupy_available, sparse_to_backend
from ..loop import FitLoop
from ..longtail import head_mask, item_counts
from ..optim import optimizer_step, sharpness_aware
from ... import normalized_softmax_ce
from ..spectral import direct_spec, direct_spec_plus, distance_temperatures
from .data import CFSplit
from .evaluate import ranking_metrics
from .losses import bpr_loss, positive_only_loss
from .models import build_cf_model

class CFTrainer:
    def __init__(self, split: CFSplit, config: CFConfig, *, out_dir=None):
        self.config = config.validate()
        self.split = split
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
        self.loop = FitLoop(self.model, self.optimizer, train_epoch=self.train_epoch,
                            validate=lambda: self.evaluate("valid"), diagnostics=self.spectrum, epochs=config.epochs,
                            patience=config.patience, eval_every=config.eval_every, out_dir=out_dir,
                            device=config.device)

    def _loss(self, users, items, rng_negatives, row_weight=None):
        cfg = self.config
        user_table, item_table = self.model.embeddings()
        weight = None if row_weight is None else row_weight(items)
        if cfg.loss == "softmax":
            return normalized_softmax_ce(user_table[users], item_table[1:], items - 1, options=cfg.scoring,
                                         row_weight=weight)
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
        interrupted = self.loop.run({"diagnostics": self.spectrum()})
        result = {
            **self.loop.summary(), "test": self.evaluate("test"), "interrupted": interrupted,
            "split": self.split.counts, "config": asdict(cfg), "alpha": cfg.balance_step, **(info or {}),
        }
        self.loop.write_result(result)
        return result


def run_cf(config: CFConfig, data, *, out_dir=None) -> dict:
    """Split ``data`` (``Interactions``) at random per user and train as ``config`` says."""
    from .data import random_split

    config.validate()
    split = random_split(data, test=config.test_share, valid=config.valid_share, seed=config.seed)
    return CFTrainer(split, config, out_dir=out_dir).fit({"dataset": data.stats()})
