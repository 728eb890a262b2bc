"""The sequential trainer: its settings (``TrainConfig``), the optimizer, one
training step (``TrainStep``), the full-ranking evaluator, and an epoch of
batches; early stopping, checkpoints and resume are ``loop.FitLoop``'s."""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import target_rank
from ..distributed import runtime, sharded_target_rank
from ..timing import synchronize
from . import files
from .data import EvalSet, Split
from .config import TrainConfig
from .loop import FitLoop
from .longtail import head_mask, item_counts, split_metrics
from .metrics import exclusion_csr, metrics_from_ranks
from .models import build_model
from .models.base import PAD
from .monitor import TableMonitor
from .optim import optimizer_step, sharpness_aware



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
                                       num_items=model.num_items + 1, options=model.head.options, exclude=exclude)
        return target_rank(hidden, table, targets, options=model.head.options, exclude=exclude)


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
            config.model, split.num_items, dim=config.dim, max_len=config.max_len, options=config.head_options,
            loss_on=config.loss_on, impl=config.impl, sharded=self.world > 1,
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
        # The diagnostics need the whole table: one process only.
        self.monitor = None
        if config.diagnostics_sample and self.world == 1:
            self.monitor = TableMonitor(split.valid, sample=config.diagnostics_sample, m=config.diagnostics_m,
                                        seed=config.seed, device=config.device,
                                        exclude_history=config.exclude_history)
        self.loop = FitLoop(
            self.model, self.optimizer, train_epoch=lambda epoch: self.train_epoch(),
            validate=lambda: self.valid(self.model),
            diagnostics=None if self.monitor is None else lambda: self.monitor(self.model),
            epochs=config.epochs, patience=config.patience, out_dir=out_dir,
            checkpoint_name=self._per_rank("checkpoint.pt"), writer=self.rank == 0, device=config.device,
        )

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

    @property
    def epoch(self) -> int:
        return self.loop.epoch

    @property
    def history(self) -> list[dict]:
        return self.loop.history

    @property
    def best(self) -> dict:
        return self.loop.best

    @property
    def checkpoint_path(self) -> Path:
        return self.loop.checkpoint_path

    def load_checkpoint(self, path) -> None:
        self.loop.load_checkpoint(path)

    def fit(self, info: dict | None = None) -> dict:
        """Train to early stop, restore the best model, evaluate on test; ``info``
        (dataset, features, ...) goes into the result and ``metrics.json``.
        Ctrl-C after the first epoch stops training early the same way (the
        result says ``"interrupted": true``); the checkpoint keeps the last
        finished epoch, so ``--resume`` continues from there."""
        cfg = self.config
        # Row 0: the table as initialized, before any training step.
        initial = None
        if self.monitor is not None and self.loop.epoch == 0:
            initial = {"diagnostics": self.monitor(self.model, with_norm_histogram=True)}
        interrupted = self.loop.run(initial)
        result = {
            **self.loop.summary(),
            "test": self.test(self.model),
            "interrupted": interrupted,
            "split": {"protocol": self.split.protocol, **self.split.counts},
            "config": asdict(cfg),
            "item_lr": cfg.table_lr(self.from_features),  # the rate used when config.item_lr is None
            **(info or {}),
        }
        self.loop.write_result(result)
        if self.out_dir:
            files.save_tensors(self.model.state_dict(), self.out_dir / self._per_rank("best_model.pt"))
        return result

    def _per_rank(self, name: str) -> str:
        return files.per_rank(name, self.rank, self.world)
