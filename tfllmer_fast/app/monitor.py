"""Per-epoch optimization diagnostics during training, on a fixed sample of
validation queries (``tfllmer_fast.app.diagnostics`` does the math)."""

from __future__ import annotations

import time

import numpy as np
import torch

from . import diagnostics as dg
from .metrics import exclusion_csr

NORM_BINS = 30


def _finite_or_none(value) -> float | None:
    """None (JSON null) where the value is NaN or infinite: epochs.jsonl stays strict JSON
    that jq, pandas and browsers all read."""
    value = float(value)
    return value if np.isfinite(value) else None


class TableMonitor:
    """``monitor(model) -> dict``: norm disparity and effective rank of the item
    table (padding row left out), and over ``sample`` validation queries the
    effective coherence (mean, max) and the condition number (median, 90th
    percentile) with effective sets of size ``m``, plus its own cost in seconds."""

    def __init__(self, eval_set, *, sample: int, m: int, seed: int, device, exclude_history: bool = True):
        rng = np.random.default_rng([seed, 7])
        count = min(sample, len(eval_set.targets))
        self.rows = np.sort(rng.choice(len(eval_set.targets), size=count, replace=False))
        self.histories = [eval_set.histories[i] for i in self.rows]
        self.targets = torch.as_tensor(np.asarray(eval_set.targets)[self.rows], device=device)
        self.exclude = exclusion_csr(self.histories, count, device, exclude_history=exclude_history)
        self.m, self.device = m, device

    @torch.no_grad()
    def __call__(self, model, *, with_norm_histogram: bool = False) -> dict:
        tic = time.perf_counter()
        model.eval()
        table = model.item_table.detach().float()[1:]  # row 0 is padding
        hidden = model.predict_hidden(self.histories, self.device).float()
        stats = dg.effective_stats(hidden, model.item_table.detach().float(), self.targets, m=self.m,
                                   exclude=self.exclude, options=model.head.options)
        kappa = stats.kappa.double()
        out = {
            "norm_disparity": dg.norm_disparity(table),
            "erank": dg.erank(table),
            "coherence_mean": float(stats.coherence.mean()),
            "coherence_max": float(stats.coherence.max()),
            "kappa_median": float(kappa.median()),
            "kappa_p90": float(torch.quantile(kappa, 0.9)),
            "gershgorin_median": stats.gershgorin.double().nanmedian(),
            "queries": len(self.rows),
            "m": self.m,
        }
        out = {k: _finite_or_none(v) if isinstance(v, (float, torch.Tensor)) else v for k, v in out.items()}
        if with_norm_histogram:
            norms = torch.linalg.vector_norm(table.double(), dim=1).cpu().numpy()
            counts, edges = np.histogram(norms, bins=NORM_BINS)
            out["norm_histogram"] = {"counts": counts.tolist(), "edges": edges.tolist()}
        out["seconds"] = time.perf_counter() - tic
        return out
