"""``tfllmer-fast plot``: training curves and diagnostics of one or more runs (matplotlib, headless)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

PANELS = (
    ("loss", "training loss", "linear"),
    ("NDCG@10", "validation NDCG@10", "linear"),
    ("coherence_mean", "effective coherence (mean)", "linear"),
    ("kappa_median", "condition number (median)", "log"),
    ("norm_disparity", "item norm disparity (max / min)", "log"),
)


class Run(NamedTuple):
    label: str
    series: dict  # panel key -> (epochs, values)
    norm_histogram: dict | None  # the initial table's row norms: {"counts", "edges"}


def load_run(run_dir, label: str | None = None) -> Run:
    """The per-epoch series of a run directory's ``epochs.jsonl``."""
    path = Path(run_dir) / "epochs.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no epochs.jsonl (not a training run directory)")
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: not JSON ({exc.msg})") from None
    series = {key: ([], []) for key, _, _ in PANELS}
    histogram = None
    for row in rows:
        epoch, diag = row["epoch"], row.get("diagnostics") or {}
        values = {"loss": row.get("loss"), "NDCG@10": (row.get("valid") or {}).get("NDCG@10"), **diag}
        for key in series:
            if values.get(key) is not None:
                series[key][0].append(epoch)
                series[key][1].append(values[key])
        histogram = histogram or diag.get("norm_histogram")
    return Run(label or Path(run_dir).name, series, histogram)


def plot_runs(runs: list[Run], out) -> Path:
    """Six panels, one line per run: the five series of ``PANELS`` per epoch
    (epoch 0 is the initial table) and the histogram of the initial item norms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    for ax, (key, title, scale) in zip(axes.flat, PANELS):
        for run in runs:
            epochs, values = run.series[key]
            if epochs:
                ax.plot(epochs, values, marker="o", markersize=3, label=run.label)
        ax.set(title=title, xlabel="epoch", yscale=scale)
        ax.grid(alpha=0.3)
    hist_ax = axes.flat[len(PANELS)]
    for run in runs:
        if run.norm_histogram:
            hist_ax.stairs(run.norm_histogram["counts"], run.norm_histogram["edges"], label=run.label)
    hist_ax.set(title="initial item norms", xlabel="row norm", ylabel="items")
    hist_ax.grid(alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if not handles:
        handles, labels = hist_ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(len(runs), 6), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
