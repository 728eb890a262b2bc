"""The one training loop of the sequential and the CF trainers: epochs to
early stop on validation NDCG@10, the best state kept, one ``epochs.jsonl``
row per epoch, a checkpoint after every epoch (atomic, exact resume), the
time of every epoch, and Ctrl-C after the first validation stopping the way
early stopping does."""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Callable

import torch

from . import files

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 2  # plain tensors, numbers and strings only: loads with weights_only=True


def _rng_state():
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


class FitLoop:
    """Runs ``train_epoch(epoch) -> row`` (the row's ``loss`` and whatever else
    the trainer measures), then every ``eval_every`` epochs (and at the last)
    ``validate() -> metrics`` and ``diagnostics() -> dict``, until ``epochs``
    or ``patience`` epochs without a better validation NDCG@10.

    ``out_dir`` (on the writing rank, ``writer``) gets ``epochs.jsonl``, and
    every process its own ``checkpoint_name``: model, optimizer, RNG, epoch,
    best state and every log row, so ``resume`` continues exactly where the
    last complete checkpoint left off and rewrites the log from it."""

    def __init__(self, model, optimizer, *, train_epoch: Callable[[int], dict], validate: Callable[[], dict],
                 epochs: int, patience: int, eval_every: int = 1, diagnostics: Callable[[], dict] | None = None,
                 out_dir=None, checkpoint_name: str = "checkpoint.pt", writer: bool = True, device="cpu"):
        self.model, self.optimizer = model, optimizer
        self.train_epoch, self.validate, self.diagnostics = train_epoch, validate, diagnostics
        self.epochs, self.patience, self.eval_every = epochs, patience, eval_every
        self.out_dir = Path(out_dir) if out_dir else None
        self.checkpoint_name, self.writer, self.device = checkpoint_name, writer, device
        self.epoch = 0
        self.best = {"NDCG@10": -1.0, "epoch": 0, "state": None}
        self.log_rows: list[dict] = []  # what epochs.jsonl holds: an epoch-0 row, then one per epoch trained

    @property
    def history(self) -> list[dict]:
        """One row per epoch trained (the log without its epoch-0 row)."""
        return [row for row in self.log_rows if row["epoch"] > 0]

    @property
    def checkpoint_path(self) -> Path | None:
        return self.out_dir / self.checkpoint_name if self.out_dir else None

    def run(self, initial_row: dict | None = None) -> bool:
        """Train to early stop and restore the best state; True when stopped by
        Ctrl-C (the best state so far is restored all the same)."""
        if self.epoch == 0 and not self.log_rows:
            if self.out_dir and self.writer:
                files.write_json_lines(self.out_dir / "epochs.jsonl", [])  # a fresh run: no rows of an older one
            if initial_row is not None:
                self._log({"epoch": 0, **initial_row})
        interrupted = False
        try:
            while self.epoch < self.epochs and self.epoch - self.best["epoch"] < self.patience:
                self._run_epoch()
        except KeyboardInterrupt:
            # Long CPU runs get stopped by hand: the epochs finished so far still
            # give a best model, so the caller tests it instead of nothing.
            if self.best["state"] is None:
                raise
            interrupted = True
            log.warning("interrupted during epoch %d: testing the best model (epoch %d)", self.epoch + 1,
                        self.best["epoch"])
        if self.best["state"] is None:
            raise RuntimeError("no epoch was validated: nothing to restore")
        self.model.load_state_dict(self.best["state"])
        return interrupted

    def summary(self) -> dict:
        """The best epoch's validation metrics and the run's cost, summed over
        the epoch rows so that a resumed run reports all of it."""
        history = self.history
        return {
            "valid": history[self.best["epoch"] - 1]["valid"],
            "best_epoch": self.best["epoch"],
            "epochs_run": self.epoch,
            "train_seconds": sum(row["train_s"] + row.get("valid_s", 0.0) for row in history),
        }

    def write_result(self, result: dict) -> None:
        """``metrics.json``: the run's result, written by the writing process."""
        if self.out_dir and self.writer:
            files.write_text(self.out_dir / "metrics.json", json.dumps(result, indent=2))

    def _run_epoch(self) -> None:
        tic = time.perf_counter()
        row = self.train_epoch(self.epoch)
        row["train_s"] = time.perf_counter() - tic
        self.epoch += 1
        row["epoch"] = self.epoch
        if self.epoch % self.eval_every == 0 or self.epoch == self.epochs:
            tic = time.perf_counter()
            row["valid"] = self.validate()
            row["valid_s"] = time.perf_counter() - tic
            if self.diagnostics is not None:
                row["diagnostics"] = self.diagnostics()
            if self.writer:
                log.info("epoch %d loss %.4f valid NDCG@10 %.4f", self.epoch, row["loss"], row["valid"]["NDCG@10"])
            if row["valid"]["NDCG@10"] > self.best["NDCG@10"]:
                self.best = {"NDCG@10": row["valid"]["NDCG@10"], "epoch": self.epoch,
                             "state": copy.deepcopy(self.model.state_dict())}
        self._log(row)
        self.save_checkpoint()

    def _log(self, row: dict) -> None:
        self.log_rows.append(row)
        if self.out_dir and self.writer:
            files.append_json_line(self.out_dir / "epochs.jsonl", row)

    def save_checkpoint(self) -> None:
        if not self.out_dir:
            return
        files.save_tensors({
            "format": CHECKPOINT_FORMAT, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch, "best_ndcg": self.best["NDCG@10"], "best_epoch": self.best["epoch"],
            "best_state": self.best["state"], "log_json": json.dumps(self.log_rows), "rng": _rng_state(),
        }, self.checkpoint_path)

    def load_checkpoint(self, path=None) -> None:
        """Continue from ``path`` (default: this run's checkpoint); the log is
        rewritten from it, which drops rows of an epoch the checkpoint does not
        hold and a torn last line."""
        path = Path(path or self.checkpoint_path)
        state = files.load_tensors(path, map_location=self.device)
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise files.DamagedFileError(f"{path}: not a checkpoint of this version (format "
                                         f"{state.get('format') if isinstance(state, dict) else None!r}, expected "
                                         f"{CHECKPOINT_FORMAT}); train into a new --out")
        self.model.load_state_dict(state["model"])
        groups = len(state["optimizer"]["param_groups"])
        if groups != len(self.optimizer.param_groups):
            raise files.DamagedFileError(f"{path}: its optimizer has {groups} parameter group(s), this run "
                                         f"{len(self.optimizer.param_groups)}: train into a new --out")
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = state["epoch"]
        self.best = {"NDCG@10": state["best_ndcg"], "epoch": state["best_epoch"], "state": state["best_state"]}
        self.log_rows = json.loads(state["log_json"])
        _set_rng_state(state["rng"])
        if self.out_dir and self.writer:
            files.write_json_lines(self.out_dir / "epochs.jsonl", self.log_rows)
