"""``tfllmer-fast plot``: training curves and diagnostics of one or more runs (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from . import files

PANELS = (
    ("loss", "training loss", "linear"),
    ("NDCG@10", "validation NDCG@10", "linear"),
    ("coherence_mean", "effective coherence (mean)", "linear"),
    ("kappa_median", "condition number (median)", "log"),
    ("norm_disparity", "item norm disparity (max / min)", "log"),
    ("erank", "item table effective rank", "linear"),
    ("erank_users", "user table effective rank", "linear"),
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
    rows = files.read_json_lines(path)
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
    """One panel per series of ``PANELS`` that some run has (epoch 0 is the
    initial table), one line per run, and the histogram of the initial item
    norms where a run recorded it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in PANELS if any(run.series[p[0]][0] for run in runs)]
    with_histogram = any(run.norm_histogram for run in runs)
    count = len(panels) + with_histogram
    if count == 0:
        raise ValueError("the runs have no per-epoch series to plot")
    cols = min(count, 3 if count <= 6 else 4)
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 4.25 * rows), squeeze=False)
    for ax, (key, title, scale) in zip(axes.flat, panels):
        for run in runs:
            epochs, values = run.series[key]
            if epochs:
                ax.plot(epochs, values, marker="o", markersize=3, label=run.label)
        ax.set(title=title, xlabel="epoch", yscale=scale)
        ax.grid(alpha=0.3)
    if with_histogram:
        hist_ax = axes.flat[len(panels)]
        for run in runs:
            if run.norm_histogram:
                hist_ax.stairs(run.norm_histogram["counts"], run.norm_histogram["edges"], label=run.label)
        hist_ax.set(title="initial item norms", xlabel="row norm", ylabel="items")
        hist_ax.grid(alpha=0.3)
    for ax in list(axes.flat)[count:]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(len(runs), 6), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / (4.25 * rows)))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
