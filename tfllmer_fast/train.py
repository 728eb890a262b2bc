"""Training loop: Adam, early stopping on validation NDCG@10, checkpoints with
exact resume, the best model restored for the test evaluation."""

from __future__ import annotations

import contextlib
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
from .distributed import runtime
from .distributed.sharded_ranking import sharded_target_rank
from .limits import bounded, validate_fields
from .longtail import LongTailSettings, head_mask, item_counts, split_metrics
from .metrics import exclusion_csr, metrics_from_ranks
from .models import build_model
from .models.base import PAD
from .monitor import TableMonitor
from .ops.ranking import target_rank
from .optim import SAMSettings, optimizer_step, sharpness_aware
from .options import DEFAULT_TEMPERATURE
from .timing import synchronize

log = logging.getLogger(__name__)


# A random item table learns at this multiple of the backbone's rate (measured
# on Beauty and LastFM, README "Defaults").
RANDOM_TABLE_LR_SCALE = 8.0


@dataclass
class TrainConfig(SAMSettings, LongTailSettings):
    """Defaults follow the literature: hidden 64, max length 50, 2 blocks, batch
    256 (S3-Rec / RecBole settings); Adam lr 1e-3 for the backbone; up to 100
    epochs with patience 10 on validation NDCG@10.

    ``item_lr`` is the item table's own Adam rate; None (the default) learns
    a random table at ``RANDOM_TABLE_LR_SCALE`` x ``lr`` and fine-tunes one
    initialized from features at ``lr``. The normalized head sees only the
    direction of an item row, and Adam moves each coordinate by about the rate
    per step whatever the row's length, so a unit row at the backbone's 1e-3
    turns slowly and a random table loses its first epochs to it; a feature
    table starts where it should be and drifts off at the larger rate on
    dense data (README, "Defaults", has both measurements).
    """

    model: str = bounded("sasrec", choices=("sasrec", "gru4rec", "bert4rec"))
    dim: int = bounded(64, 1)
    max_len: int = bounded(50, 2)
    batch_size: int = bounded(256, 1)
    lr: float = bounded(1e-3, 0.0)
    item_lr: float | None = bounded(None, 0.0)
    weight_decay: float = bounded(0.0, 0.0)
    epochs: int = bounded(100, 1)
    patience: int = bounded(10, 1)
    loss_on: str = bounded("all", choices=("all", "last"))
    normalize: bool = True
    temperature: float = bounded(DEFAULT_TEMPERATURE, 1e-6)
    freeze_items: bool = False
    seed: int = 42
    device: str = "cpu"
    amp: bool | None = None  # None: bf16 autocast on CUDA only
    eval_batch_size: int = bounded(2048, 1)
    exclude_history: bool = True
    impl: str = bounded("auto", choices=("auto", "triton", "chunked", "torch"))
    diagnostics_sample: int = bounded(256, 0)  # validation queries for per-epoch diagnostics; 0 turns them off
    diagnostics_m: int = bounded(16, 2)  # effective-set size: the target and its m - 1 hardest negatives
    model_options: dict = field(default_factory=dict)

    def validate(self) -> TrainConfig:
        validate_fields(self)
        return self

    def table_lr(self, from_features: bool) -> float:
        """The item table's Adam rate: ``item_lr``, or its default for a table
        initialized at random or from features."""
        if self.item_lr is not None:
            return self.item_lr
        return self.lr if from_features else RANDOM_TABLE_LR_SCALE * self.lr


class _Evaluator:
    """Full ranking of one EvalSet; the exclusion lists are built once.
    ``head`` (a bool per item id) splits the metrics into head and tail targets."""

    def __init__(self, eval_set: EvalSet, config: TrainConfig, head):
        self.eval_set = eval_set
        self.config = config
        self.head = head
        self._exclude = None

    @torch.no_grad()
    def __call__(self, model) -> dict:
        model.eval()
        device = torch.device(self.config.device)
        hist, targets = self.eval_set.histories, self.eval_set.targets
        if self._exclude is None:
            self._exclude = exclusion_csr(hist, len(hist), device, exclude_history=self.config.exclude_history)
        indptr, items = self._exclude
        rank, world = runtime.rank_world()
        # Each rank ranks a contiguous part of the users; with a sharded table
        # every rank takes part in every batch, so all run the same number.
        per_rank = -(-len(targets) // world)
        lo, hi = min(rank * per_rank, len(targets)), min((rank + 1) * per_rank, len(targets))
        step = self.config.eval_batch_size
        ranks = []
        for start in range(lo, lo + max(per_rank, 1), step):
            start, stop = min(start, hi), min(start + step, hi)
            sub = (indptr[start : stop + 1] - indptr[start], items[indptr[start] : indptr[stop]])
            # Ranked in the training's compute dtype (bf16 autocast on CUDA:
            # the fused kernels; fp32 on CPU), not upcast to fp32 first.
            with autocast(self.config.device, self.config.amp):
                hidden = model.predict_hidden(hist[start:stop], device)
                ranks.append(self._rank(model, hidden, torch.as_tensor(targets[start:stop], device=device), sub))
        ranks = torch.cat(ranks)
        ranks = (runtime.gather_ranks(ranks) if world > 1 else ranks).cpu().numpy()
        out = metrics_from_ranks(ranks)
        out["longtail"] = split_metrics(metrics_from_ranks, ranks, targets, self.head)
        out["exclude_history"] = self.config.exclude_history
        return out

    @staticmethod
    def _rank(model, hidden, targets, exclude):
        table = model.item_table
        if not torch.is_autocast_enabled(hidden.device.type):
            hidden, table = hidden.float(), table.float()
        if model.sharded:
            return sharded_target_rank(hidden, table, targets, shard_start=model.table_rows[0],
                                       num_items=model.num_items + 1, exclude=exclude, **model.head.options._asdict())
        return target_rank(hidden, table, targets, exclude=exclude, **model.head.options._asdict())


def autocast(device, amp: bool | None = None):
    """The library's one mixed-precision rule: bf16 autocast on CUDA, none on
    CPU, unless ``amp`` says otherwise."""
    device_type = torch.device(device).type
    use = amp if amp is not None else device_type == "cuda"
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=use)


def _no_phase(name: str):
    return contextlib.nullcontext()


class TrainStep:
    """One optimizer step, shared by the trainer, the profiler and the
    training-step benchmark: backbone forward, head loss (under ``autocast``),
    backward, optimizer step. ``head(hidden, targets) -> loss`` defaults to the
    model's own ``head_loss``; ``phase(name)`` wraps each phase (the profiler
    times them). With an ``ItemwiseSAM`` optimizer the forward and backward
    run twice (at ``w`` with the item-wise row weights, then at ``w + eps``)
    and the loss returned is the second one."""

    PHASES = ("backbone forward", "head forward", "backward", "optimizer")

    def __init__(self, model, optimizer, device, amp: bool | None = None, head=None, replicated=None):
        self.model, self.optimizer = model, optimizer
        self.device, self.amp = device, amp
        self.head = head or model.head_loss
        # Parameters every rank holds a copy of (the backbone, in a distributed
        # run): their gradients are averaged over ranks before the step.
        self.replicated = list(replicated or [])

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor, phase=_no_phase) -> torch.Tensor:
        """A batch on the host (as ``make_batch`` gives it) moves to the device
        here, its count of real targets read on the host first, so the step
        reads nothing back from the device (a batch already there costs one read)."""
        rows = int((targets != PAD).sum()) if targets.device.type == "cpu" else None
        inputs = inputs.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)

        def forward_backward(row_weight=None):
            with autocast(self.device, self.amp):
                with phase("backbone forward"):
                    hidden = self.model.encode(inputs)
                with phase("head forward"):
                    loss = (self.head(hidden, targets, rows=rows) if row_weight is None
                            else self.head(hidden, targets, row_weight=row_weight, rows=rows))
            self.optimizer.zero_grad(set_to_none=True)
            with phase("backward"):
                loss.backward()
                if self.replicated:
                    runtime.average_gradients(self.replicated)
            return loss

        return optimizer_step(self.optimizer, forward_backward, lambda: phase("optimizer")).detach()


def make_optimizer(model, config: TrainConfig, *, from_features: bool = False, item_counts=None):
    """Adam over the trainable parameters: the item table (or this rank's
    shard) at ``config.table_lr(from_features)``, everything else at
    ``config.lr``; wrapped in ``ItemwiseSAM`` when ``config.sam`` says so
    (``item_counts``, the training count per item id, sets the item-wise radii)."""
    table = model.item_table
    groups = [{"params": [p for p in model.parameters() if p.requires_grad and p is not table]}]
    if table.requires_grad:
        groups.append({"params": [table], "lr": config.table_lr(from_features)})
    adam = torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)
    return sharpness_aware(adam, config.sam, rho=config.sam_rho, exponent=config.sam_exponent,
                           item_counts=item_counts)


def _rng_state():
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Owns model, optimizer and the per-epoch state; ``fit`` runs to early stop."""

    def __init__(self, split: Split, config: TrainConfig, *, item_init=None, out_dir=None):
        config.validate()
        self.split = split
        self.config = config
        self.out_dir = Path(out_dir) if out_dir else None
        self.rank, self.world = runtime.rank_world()
        torch.manual_seed(config.seed)
        self.model = build_model(
            config.model, split.num_items, dim=config.dim, max_len=config.max_len, normalize=config.normalize,
            temperature=config.temperature, loss_on=config.loss_on, impl=config.impl, sharded=self.world > 1,
            **config.model_options,
        ).to(config.device)
        if item_init is not None:
            self.model.init_items(item_init, freeze=config.freeze_items)
        replicated = [p for name, p in self.model.named_parameters() if not name.startswith("head.")]
        if self.world > 1:
            runtime.broadcast_parameters(replicated)
        self.from_features = item_init is not None
        if config.sam != "off" and self.world > 1:
            raise ValueError("sam: sharpness-aware training runs in one process (its perturbation needs the "
                             "gradient norm over the whole table)")
        counts = item_counts(split.train, split.num_items)
        self.optimizer = make_optimizer(self.model, config, from_features=self.from_features, item_counts=counts)
        self.step = TrainStep(self.model, self.optimizer, config.device, config.amp,
                              replicated=replicated if self.world > 1 else None)
        self.train_sequences = [s for s in split.train if len(s) >= 2]
        head = head_mask(counts, config.head_share)
        self.valid = _Evaluator(split.valid, config, head)
        self.test = _Evaluator(split.test, config, head)
        self.epoch = 0
        self.best = {"NDCG@10": -1.0, "epoch": 0, "state": None}
        self.history: list[dict] = []
        # The diagnostics need the whole table: one process only.
        self.monitor = None
        if config.diagnostics_sample and self.world == 1:
            self.monitor = TableMonitor(split.valid, sample=config.diagnostics_sample, m=config.diagnostics_m,
                                        seed=config.seed, device=config.device,
                                        exclude_history=config.exclude_history)

    def train_epoch(self) -> dict:
        cfg = self.config
        self.model.train()
        rng = np.random.default_rng([cfg.seed, self.epoch])  # order depends on (seed, epoch) only: exact resume
        order = rng.permutation(len(self.train_sequences))
        losses = []
        tic = time.perf_counter()
        # In a distributed run each rank takes its part of every batch, so a
        # step sees batch_size sequences in all, as one process does; a last
        # batch too small to give every rank one sequence is dropped.
        batches = range(0, len(order) - self.world + 1, cfg.batch_size)
        show = None if self.rank == 0 else True  # None: tqdm decides (off without a terminal)
        for start in tqdm(batches, desc=f"epoch {self.epoch + 1}", leave=False, disable=show):
            batch = order[start : start + cfg.batch_size]
            seqs = [self.train_sequences[i] for i in np.array_split(batch, self.world)[self.rank]]
            inputs, targets = self.model.make_batch(seqs, rng)
            # Losses stay on the device until the epoch ends: a read per step
            # would stall the GPU's queue every step.
            losses.append(self.step(inputs, targets))
        synchronize(torch.device(cfg.device))
        seconds = time.perf_counter() - tic
        loss = float(torch.stack(losses).float().mean()) if losses else float("nan")
        return {"loss": loss, "step_ms": 1e3 * seconds / max(len(losses), 1)}

    def fit(self, info: dict | None = None) -> dict:
        """Train to early stop, restore the best model, evaluate on test; ``info``
        (dataset, features, ...) goes into the result and ``metrics.json``.
        Ctrl-C after the first epoch stops training early the same way (the
        result says ``"interrupted": true``); the checkpoint keeps the last
        finished epoch, so ``--resume`` continues from there."""
        cfg = self.config
        interrupted = False
        if self.epoch == 0 and self.monitor is not None:
            # Row 0: the table as initialized, before any training step.
            self._write_epoch({"epoch": 0, "diagnostics": self.monitor(self.model, with_norm_histogram=True)})
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
            "item_lr": cfg.table_lr(self.from_features),  # the rate used when config.item_lr is None
            **(info or {}),
        }
        if self.out_dir:
            if self.rank == 0:
                (self.out_dir / "metrics.json").write_text(json.dumps(result, indent=2))
            torch.save(self.model.state_dict(), self.out_dir / self._per_rank("best_model.pt"))
        return result

    def _per_rank(self, name: str) -> str:
        """One file per rank in a distributed run (each holds its own shard)."""
        if self.world == 1:
            return name
        stem, suffix = name.rsplit(".", 1)
        return f"{stem}.rank{self.rank}-of-{self.world}.{suffix}"

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / self._per_rank("checkpoint.pt")

    def _run_epoch(self) -> None:
        tic = time.perf_counter()
        row = self.train_epoch()
        row["train_s"] = time.perf_counter() - tic
        tic = time.perf_counter()
        row["valid"] = self.valid(self.model)
        row["valid_s"] = time.perf_counter() - tic
        if self.monitor is not None:
            row["diagnostics"] = self.monitor(self.model)
        self.epoch += 1
        row["epoch"] = self.epoch
        self.history.append(row)
        if self.rank == 0:
            log.info("epoch %d loss %.4f valid NDCG@10 %.4f", self.epoch, row["loss"], row["valid"]["NDCG@10"])
        if row["valid"]["NDCG@10"] > self.best["NDCG@10"]:
            self.best = {"NDCG@10": row["valid"]["NDCG@10"], "epoch": self.epoch,
                         "state": copy.deepcopy(self.model.state_dict())}
        self._write_epoch(row)
        self.save_checkpoint()

    def _write_epoch(self, row):
        if self.out_dir and self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / "epochs.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")

    def save_checkpoint(self) -> None:
        if not self.out_dir:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save({
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "epoch": self.epoch,
            "best": self.best, "history": self.history, "rng": _rng_state(),
        }, self.checkpoint_path)

    def load_checkpoint(self, path) -> None:
        state = torch.load(path, map_location=self.config.device, weights_only=False)
        self.model.load_state_dict(state["model"])
        groups = len(state["optimizer"]["param_groups"])
        if groups != len(self.optimizer.param_groups):
            raise ValueError(f"{path}: its optimizer has {groups} parameter group(s), this version {len(self.optimizer.param_groups)} "
                             "(the item table has its own rate since 0.1.0's --item-lr): start a new run in another --out")
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.best, self.history = state["epoch"], state["best"], state["history"]
        _set_rng_state(state["rng"])
