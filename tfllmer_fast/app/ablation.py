"""``tfllmer-fast ablate``: the paper's variants over several seeds, one table.

Variants: random initialization; PCA + normalized head; Rec-PCA + normalized
head (TF-LLMER); Rec-PCA without normalization; optionally TF-LLMER at other
graph filter strengths (beta) and graph sizes (top-K). Each (variant, seed)
is an ordinary run directory under ``OUT/<variant>/seed<s>``; a finished one
(its ``metrics.json`` exists) is never redone, an interrupted one resumes
from its checkpoint, so a stopped sweep continues where it stopped.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

from . import files
from .config import RunConfig

VARIANTS = {
    "random": {"init": "random", "normalize": True},
    "pca": {"init": "pca", "normalize": True},
    "tf-llmer": {"init": "recpca", "normalize": True},
    "recpca-no-norm": {"init": "recpca", "normalize": False},
}
REFERENCE = "tf-llmer"


def variant_configs(base: RunConfig, *, betas=(), top_ks=()) -> dict[str, RunConfig]:
    """The variants as run configurations derived from ``base``."""
    out = {}
    for name, v in VARIANTS.items():
        out[name] = replace(base, items=replace(base.items, init=v["init"]),
                            train=replace(base.train, normalize=v["normalize"]))
    for beta in betas:
        tf = out[REFERENCE]
        out[f"tf-llmer beta={beta:g}"] = replace(tf, items=replace(tf.items, beta=float(beta)))
    for k in top_ks:
        tf = out[REFERENCE]
        out[f"tf-llmer top-k={k}"] = replace(tf, items=replace(tf.items, top_k=int(k)))
    return out


def run_ablation(base: RunConfig, seeds, out_dir, *, betas=(), top_ks=(), data=None, features=None) -> Path:
    """Run every (variant, seed) not finished yet; write ``OUT/ablation.md`` and
    ``OUT/ablation.png``. Returns the path of the table."""
    from .pipeline import run

    out_dir = Path(out_dir)
    configs = variant_configs(base, betas=betas, top_ks=top_ks)
    for name, config in configs.items():
        for seed in seeds:
            run_dir = out_dir / _slug(name) / f"seed{seed}"
            if (run_dir / "metrics.json").exists():
                continue
            seeded = replace(config, train=replace(config.train, seed=int(seed)))
            resume = any(run_dir.glob("checkpoint*.pt"))
            run(seeded, data=data, features=features, out_dir=run_dir, resume=resume)
    table = out_dir / "ablation.md"
    files.write_text(table, summary_markdown(out_dir, list(configs), seeds))
    _plot(out_dir, list(configs), seeds)
    return table


def _slug(name: str) -> str:
    return name.replace(" ", "_").replace("=", "")


def collect(out_dir, names, seeds) -> dict:
    """{variant: {seed: metrics.json + the first and last diagnostics rows}}."""
    results = {}
    for name in names:
        for seed in seeds:
            run_dir = Path(out_dir) / _slug(name) / f"seed{seed}"
            if not (run_dir / "metrics.json").exists():
                continue
            metrics = json.loads((run_dir / "metrics.json").read_text())
            rows = files.read_json_lines(run_dir / "epochs.jsonl")
            diag = [r["diagnostics"] for r in rows if r.get("diagnostics")]
            metrics["initial"] = diag[0] if diag else {}
            metrics["final"] = diag[-1] if diag else {}
            metrics["first_loss"] = next((r["loss"] for r in rows if "loss" in r), None)
            metrics["last_loss"] = next((r["loss"] for r in reversed(rows) if "loss" in r), None)
            results.setdefault(name, {})[seed] = metrics
    return results


def _mean_std(values, digits: int = 4) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "-"
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def summary_markdown(out_dir, names, seeds) -> str:
    """Mean ± sample std over seeds per variant, and the paired difference of
    NDCG@10 to TF-LLMER (same seed) with its spread."""
    results = collect(out_dir, names, seeds)
    ref = results.get(REFERENCE, {})
    lines = [
        "| variant | seeds | test HR@10 | test NDCG@10 | NDCG@10 - TF-LLMER (paired) | best epoch | "
        "train + valid s | first / last epoch loss | initial coherence | initial kappa (median) | "
        "final kappa (median) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        runs = results.get(name, {})
        if not runs:
            continue
        r = list(runs.values())
        paired = [runs[s]["test"]["NDCG@10"] - ref[s]["test"]["NDCG@10"] for s in runs if s in ref]
        lines.append("| " + " | ".join([
            name, str(len(r)),
            _mean_std([x["test"]["HR@10"] for x in r]),
            _mean_std([x["test"]["NDCG@10"] for x in r]),
            "(reference)" if name == REFERENCE else _mean_std(paired),
            _mean_std([float(x["best_epoch"]) for x in r], 1),
            _mean_std([x["train_seconds"] for x in r], 1),
            f"{_mean_std([x['first_loss'] for x in r], 3)} / {_mean_std([x['last_loss'] for x in r], 3)}",
            _mean_std([x["initial"].get("coherence_mean") for x in r], 3),
            _mean_std([x["initial"].get("kappa_median") for x in r], 1),
            _mean_std([x["final"].get("kappa_median") for x in r], 1),
        ]) + " |")
    return "\n".join(lines) + "\n"


def _plot(out_dir, names, seeds) -> None:
    try:
        from .plots import load_run, plot_runs
    except ImportError:
        return
    dirs = [(Path(out_dir) / _slug(n) / f"seed{s}", f"{n} s{s}") for n in names for s in seeds]
    runs = [load_run(d, label) for d, label in dirs if (d / "epochs.jsonl").exists()]
    try:
        plot_runs(runs, Path(out_dir) / "ablation.png")
    except ImportError:  # matplotlib is optional: the table is the result
        pass
