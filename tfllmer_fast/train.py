"""Training loop: Adam, early stopping on validation NDCG@10, checkpoints with
exact resume, the best model restored for the test evaluation."""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import EvalSet, Split
from .metrics import exclusion_csr, metrics_from_ranks
from .models import build_model
from .ops.ranking import target_rank

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Defaults follow the literature: hidden 64, max length 50, 2 blocks, batch
    256 (S3-Rec / RecBole settings); Adam lr 1e-3; up to 100 epochs with
    patience 10 on validation NDCG@10."""

    model: str = "sasrec"
    dim: int = 64
    max_len: int = 50
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 100
    patience: int = 10
    loss_on: str = "all"
    normalize: bool = True
    temperature: float = 1.0
    init: str = "random"
    freeze_items: bool = False
    seed: int = 42
    device: str = "cpu"
    amp: bool | None = None  # None: bf16 autocast on CUDA only
    eval_batch_size: int = 2048
    exclude_history: bool = True
    impl: str = "auto"
    model_options: dict = field(default_factory=dict)


class _Evaluator:
    """Full ranking of one EvalSet; the exclusion lists are built once."""

    def __init__(self, eval_set: EvalSet, config: TrainConfig):
        self.eval_set = eval_set
        self.config = config
        self._exclude = None

    @torch.no_grad()
    def __call__(self, model) -> dict:
        model.eval()
        device = torch.device(self.config.device)
        hist, targets = self.eval_set.histories, self.eval_set.targets
        if self._exclude is None:
            self._exclude = exclusion_csr(hist, len(hist), device, exclude_history=self.config.exclude_history)
        indptr, items = self._exclude
        ranks = []
        step = self.config.eval_batch_size
        for start in range(0, len(targets), step):
            stop = min(start + step, len(targets))
            with _autocast(self.config):
                hidden = model.predict_hidden(hist[start:stop], device)
            sub = (indptr[start : stop + 1] - indptr[start], items[indptr[start] : indptr[stop]])
            ranks.append(target_rank(
                hidden.float(), model.item_table.float(), torch.as_tensor(targets[start:stop], device=device),
                exclude=sub, normalize_items=model.head.normalize_items, temperature=model.head.temperature,
            ))
        out = metrics_from_ranks(torch.cat(ranks))
        out["exclude_history"] = self.config.exclude_history
        return out


def _autocast(config: TrainConfig):
    use = config.amp if config.amp is not None else config.device.startswith("cuda")
    return torch.autocast("cuda" if config.device.startswith("cuda") else "cpu", dtype=torch.bfloat16, enabled=use)


def _rng_state():
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Owns model, optimizer and the per-epoch state; ``fit`` runs to early stop."""

    def __init__(self, split: Split, config: TrainConfig, *, item_init=None, out_dir=None):
        if config.epochs < 1 or config.patience < 1:
            raise ValueError(f"epochs and patience must be >= 1, got {config.epochs} and {config.patience}")
        self.split = split
        self.config = config
        self.out_dir = Path(out_dir) if out_dir else None
        torch.manual_seed(config.seed)
        self.model = build_model(
            config.model, split.num_items, dim=config.dim, max_len=config.max_len, normalize=config.normalize,
            temperature=config.temperature, loss_on=config.loss_on, impl=config.impl, **config.model_options,
        ).to(config.device)
        if item_init is not None:
            self.model.init_items(item_init, freeze=config.freeze_items)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
        self.train_sequences = [s for s in split.train if len(s) >= 2]
        self.valid = _Evaluator(split.valid, config)
        self.test = _Evaluator(split.test, config)
        self.epoch = 0
        self.best = {"NDCG@10": -1.0, "epoch": 0, "state": None}
        self.history: list[dict] = []

    def train_epoch(self) -> dict:
        cfg = self.config
        self.model.train()
        rng = np.random.default_rng([cfg.seed, self.epoch])  # order depends on (seed, epoch) only: exact resume
        order = rng.permutation(len(self.train_sequences))
        losses, step_times = [], []
        batches = range(0, len(order), cfg.batch_size)
        for start in tqdm(batches, desc=f"epoch {self.epoch + 1}", leave=False, disable=None):
            seqs = [self.train_sequences[i] for i in order[start : start + cfg.batch_size]]
            inputs, targets = self.model.make_batch(seqs, rng)
            tic = time.perf_counter()
            with _autocast(cfg):
                loss = self.model.loss(inputs.to(cfg.device), targets.to(cfg.device))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            losses.append(loss.item())
            step_times.append(time.perf_counter() - tic)
        return {"loss": float(np.mean(losses)), "step_ms": 1e3 * float(np.median(step_times))}

    def fit(self, info: dict | None = None) -> dict:
        """Train to early stop, restore the best model, evaluate on test; ``info``
        (dataset, features, ...) goes into the result and ``metrics.json``.
        Ctrl-C after the first epoch stops training early the same way (the
        result says ``"interrupted": true``); the checkpoint keeps the last
        finished epoch, so ``--resume`` continues from there."""
        cfg = self.config
        interrupted = False
        try:
            while self.epoch < cfg.epochs and self.epoch - self.best["epoch"] < cfg.patience:
                self._run_epoch()
        except KeyboardInterrupt:
            # Long CPU runs get stopped by hand: the epochs finished so far still
            # give a best model, so report its test metrics instead of nothing.
            if self.best["state"] is None:
                raise
            interrupted = True
            log.warning("interrupted during epoch %d: testing the best model (epoch %d)", self.epoch + 1,
                        self.best["epoch"])
        self.model.load_state_dict(self.best["state"])
        result = {
            "valid": self.history[self.best["epoch"] - 1]["valid"],
            "test": self.test(self.model),
            "best_epoch": self.best["epoch"],
            "epochs_run": self.epoch,
            "interrupted": interrupted,
            # Summed from the epoch rows so that a resumed run reports its whole cost
            # (rows from checkpoints written before valid_s existed count training only).
            "train_seconds": sum(row["train_s"] + row.get("valid_s", 0.0) for row in self.history),
            "split": {"protocol": self.split.protocol, **self.split.counts},
            "config": asdict(cfg),
            **(info or {}),
        }
        if self.out_dir:
            (self.out_dir / "metrics.json").write_text(json.dumps(result, indent=2))
            torch.save(self.model.state_dict(), self.out_dir / "best_model.pt")
        return result

    def _run_epoch(self) -> None:
        tic = time.perf_counter()
        row = self.train_epoch()
        row["train_s"] = time.perf_counter() - tic
        tic = time.perf_counter()
        row["valid"] = self.valid(self.model)
        row["valid_s"] = time.perf_counter() - tic
        self.epoch += 1
        row["epoch"] = self.epoch
        self.history.append(row)
        log.info("epoch %d loss %.4f valid NDCG@10 %.4f", self.epoch, row["loss"], row["valid"]["NDCG@10"])
        if row["valid"]["NDCG@10"] > self.best["NDCG@10"]:
            self.best = {"NDCG@10": row["valid"]["NDCG@10"], "epoch": self.epoch,
                         "state": copy.deepcopy(self.model.state_dict())}
        self._write_epoch(row)
        self.save_checkpoint()

    def _write_epoch(self, row):
        if self.out_dir:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / "epochs.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")

    def save_checkpoint(self) -> None:
        if not self.out_dir:
            return
        torch.save({
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "epoch": self.epoch,
            "best": self.best, "history": self.history, "rng": _rng_state(),
        }, self.out_dir / "checkpoint.pt")
        (self.out_dir / "config.json").write_text(json.dumps(asdict(self.config), indent=2))

    def load_checkpoint(self, path) -> None:
        state = torch.load(path, map_location=self.config.device, weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.best, self.history = state["epoch"], state["best"], state["history"]
        _set_rng_state(state["rng"])
