"""RecBole's own CE vs the fused head, side by side (docs/integrations/recbole.md).

``beauty``: SASRec (RecBole defaults) on S3-Rec Beauty, leave-one-out, full
ranking, one subprocess per row (so each row's RSS peak is its own): RecBole's
``SASRec`` + ``Trainer`` (dense CE, dense full-sort evaluation) vs
``FusedSASRec`` + ``FusedTrainer`` with ``PLAIN_CE`` and with ``HeadOptions()``;
same seed and settings, early stopping on valid NDCG@10 under an epoch cap.

``synthetic``: one training step (forward + backward through SASRec and its
item table, Adam step) on a catalog of ``--items`` random items with random
sequences: RecBole's ``SASRec.calculate_loss`` vs ``FusedSASRec``'s, at the
batch sizes given; a row whose (B, N) logits would pass ``--dense-limit-gib``
is not run, its bytes are reported instead.

Each prints a markdown table and writes JSON::

    python -m benchmarks.integrations.recbole_side_by_side beauty --epochs 3 --json beauty.json
    python -m benchmarks.integrations.recbole_side_by_side synthetic --items 1000000 --json synthetic.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
ROWS = {
    "recbole": "RecBole SASRec, its own CE, dense eval",
    "fused": "FusedSASRec, PLAIN_CE (fused), fused eval",
    "normalized": "FusedSASRec, HeadOptions() (normalized), fused eval",
}


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def beauty_row(args) -> dict:
    """One Beauty run in this process: train with early stopping, test the best checkpoint."""
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    from tfllmer_fast.integrations import recbole as fused

    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    os.chdir(work)  # RecBole's Trainer writes ./log_tensorboard
    name = fused.s3rec_to_atomic(args.data, work / "data")
    settings = {**fused.leave_one_out_config(work / "data", args.max_len), "epochs": args.epochs,
                "stopping_step": args.stopping_step, "valid_metric": "NDCG@10", "metrics": ["NDCG", "Hit"],
                "topk": [10], "checkpoint_dir": str(work / f"saved-{args.row}"), "use_gpu": False, "state": "WARNING",
                "show_progress": False, "seed": args.seed}
    settings.update(model_settings(args))
    if args.row == "normalized":
        settings["fused_head"] = {"normalize_items": True}
    model_class = SASRec if args.row == "recbole" else fused.FusedSASRec
    config = Config(model=model_class, dataset=name, config_dict=settings)
    init_seed(config["seed"], config["reproducibility"])
    train, valid, test = data_preparation(config, create_dataset(config))
    init_seed(config["seed"], config["reproducibility"])
    model = model_class(config, train.dataset).to(config["device"])
    trainer = (Trainer if args.row == "recbole" else fused.FusedTrainer)(config, model)
    start = time.perf_counter()  # s / epoch below includes each epoch's valid evaluation
    trainer.fit(train, valid, saved=True, verbose=False)
    elapsed = time.perf_counter() - start
    # Stock Trainer.evaluate(load_best_model=True) calls torch.load with weights_only=True (torch >= 2.6),
    # which rejects RecBole's own checkpoint; the best weights are loaded here the way FusedTrainer does.
    checkpoint = torch.load(trainer.saved_model_file, map_location="cpu", weights_only=False)
    model.load_state_dict(checkpoint["state_dict"])
    result = trainer.evaluate(test, load_best_model=False)
    epochs = len(trainer.train_loss_dict)
    return {"row": args.row, "label": ROWS[args.row], "epochs_run": epochs, "epoch_cap": args.epochs,
            "early_stopped": epochs < args.epochs, "best_epoch": int(checkpoint["epoch"]),
            "best_valid_ndcg@10": float(trainer.best_valid_score), "test_ndcg@10": float(result["ndcg@10"]),
            "test_hit@10": float(result["hit@10"]), "s_per_epoch": elapsed / epochs,
            "train_loss": [float(v) for _, v in sorted(trainer.train_loss_dict.items())],
            "peak_rss_gib": peak_rss_gib(), "n_items": int(train.dataset.item_num),
            "hidden_size": config["hidden_size"], "n_layers": config["n_layers"],
            "train_batch_size": config["train_batch_size"]}


def model_settings(args) -> dict:
    """The model-size overrides given on the command line (RecBole's SASRec defaults otherwise)."""
    names = {"hidden_size": args.hidden_size, "inner_size": args.inner_size, "n_layers": args.n_layers,
             "train_batch_size": args.train_batch_size}
    return {key: value for key, value in names.items() if value is not None}


class _Catalog:
    """What SequentialRecommender.__init__ reads from a dataset: the item count."""

    def __init__(self, n_items: int):
        self.n_items = n_items

    def num(self, field: str) -> int:
        return self.n_items


def synthetic_row(args) -> dict:
    """One training step of SASRec (RecBole defaults) over ``args.items`` items at batch ``args.batch``."""
    import torch
    from recbole.config import Config
    from recbole.data.interaction import Interaction
    from recbole.model.sequential_recommender import SASRec

    from tfllmer_fast.integrations import recbole as fused

    torch.set_num_threads(args.threads)
    model_class = SASRec if args.row == "recbole" else fused.FusedSASRec
    settings = {"use_gpu": False, "state": "WARNING", "MAX_ITEM_LIST_LENGTH": args.max_len, "loss_type": "CE",
                "train_neg_sample_args": None, "seed": args.seed, **model_settings(args)}
    if args.row == "normalized":
        settings["fused_head"] = {"normalize_items": True}
    config = Config(model=model_class, dataset="synthetic", config_dict=settings)
    torch.manual_seed(args.seed)
    model = model_class(config, _Catalog(args.items))
    optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])
    generator = torch.Generator().manual_seed(args.seed)
    B, L = args.batch, args.max_len
    lengths = torch.randint(1, L + 1, (B,), generator=generator)
    seq = torch.randint(1, args.items, (B, L), generator=generator) * (torch.arange(L) < lengths[:, None])
    batch = Interaction({model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: lengths,
                         model.POS_ITEM_ID: torch.randint(1, args.items, (B,), generator=generator)})
    base_rss = peak_rss_gib()
    times = []
    for _ in range(args.steps + 1):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = model.calculate_loss(batch)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    steady = times[1:]  # the first step also allocates Adam's state
    return {"row": args.row, "label": ROWS[args.row], "items": args.items, "batch": B,
            "hidden_size": config["hidden_size"], "step_s": sorted(steady)[len(steady) // 2],
            "first_step_s": times[0], "peak_rss_gib": peak_rss_gib(), "rss_before_steps_gib": base_rss,
            "loss": float(loss)}


def logits_gib(batch: int, items: int) -> float:
    """RecBole's dense CE holds the fp32 (B, N) logits, their log-softmax and their gradient: 3 x 4 B N bytes."""
    return 3 * 4 * batch * items / 2**30


def run_child(args, row: str, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "benchmarks.integrations.recbole_side_by_side", args.table, "--child", row,
               "--workdir", args.workdir, "--threads", str(args.threads), "--seed", str(args.seed),
               "--max-len", str(args.max_len), *extra]
    for flag in ("hidden_size", "inner_size", "n_layers", "train_batch_size"):
        if getattr(args, flag) is not None:
            command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    done = subprocess.run(command, check=True, capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2])
    return json.loads(done.stdout.strip().splitlines()[-1])


def beauty_table(rows: list[dict]) -> str:
    lines = ["| run | epochs run (cap) | early stop | test NDCG@10 | test HR@10 | s / epoch | peak RSS GiB |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['epochs_run']} ({r['epoch_cap']}) | {'yes' if r['early_stopped'] else 'no'} "
                     f"| {r['test_ndcg@10']:.4f} | {r['test_hit@10']:.4f} | {r['s_per_epoch']:.1f} "
                     f"| {r['peak_rss_gib']:.2f} |")
    return "\n".join(lines)


def synthetic_table(rows: list[dict]) -> str:
    lines = ["| run | N | B | step s | peak RSS GiB | dense (B, N) fp32 x3 GiB |", "|---|---|---|---|---|---|"]
    for r in rows:
        step = "not run" if r.get("skipped") else f"{r['step_s']:.2f}"
        rss = "not run" if r.get("skipped") else f"{r['peak_rss_gib']:.2f}"
        dense = f"{logits_gib(r['batch'], r['items']):.1f}" if r["row"] == "recbole" else "-"
        label = r["label"].rsplit(", ", 1)[0]  # one training step: no evaluation
        lines.append(f"| {label} | {r['items']:,} | {r['batch']} | {step} | {rss} | {dense} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("table", choices=("beauty", "synthetic"))
    parser.add_argument("--rows", default="recbole,fused,normalized", help="comma-separated: " + ", ".join(ROWS))
    parser.add_argument("--data", default=str(DATA / "Beauty.txt"), help="S3-Rec file (beauty)")
    parser.add_argument("--epochs", type=int, default=3, help="epoch cap (beauty)")
    parser.add_argument("--stopping-step", type=int, default=2, help="early stopping patience in evaluations (beauty)")
    parser.add_argument("--items", type=int, default=1_000_000, help="catalog size (synthetic)")
    parser.add_argument("--batches", default="2048,256", help="comma-separated batch sizes (synthetic)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up (synthetic)")
    parser.add_argument("--dense-limit-gib", type=float, default=20.0,
                        help="skip a RecBole row whose dense logits would need more (synthetic)")
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--hidden-size", type=int, default=None, help="SASRec hidden_size (RecBole default 64)")
    parser.add_argument("--inner-size", type=int, default=None, help="SASRec inner_size (RecBole default 256)")
    parser.add_argument("--n-layers", type=int, default=None, help="SASRec n_layers (RecBole default 2)")
    parser.add_argument("--train-batch-size", type=int, default=None, help="beauty: RecBole default 2048")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json", default=None, help="write the rows here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.row = args.child
        row = beauty_row(args) if args.table == "beauty" else synthetic_row(args)
        print(json.dumps(row))
        return
    rows = [r for r in args.rows.split(",") if r]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        parser.error(f"--rows: unknown {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    with tempfile.TemporaryDirectory() as tmp:
        args.workdir = args.workdir or tmp
        results = []
        if args.table == "beauty":
            for row in rows:
                results.append(run_child(args, row, ["--data", args.data, "--epochs", str(args.epochs),
                                                     "--stopping-step", str(args.stopping_step)]))
            table = beauty_table(results)
        else:
            for batch in (int(b) for b in args.batches.split(",")):
                for row in rows:
                    if row == "recbole" and logits_gib(batch, args.items) > args.dense_limit_gib:
                        results.append({"row": row, "label": ROWS[row], "items": args.items, "batch": batch,
                                        "skipped": True, "dense_gib": logits_gib(batch, args.items)})
                        continue
                    results.append(run_child(args, row, ["--items", str(args.items), "--batch", str(batch),
                                                         "--steps", str(args.steps)]))
            table = synthetic_table(results)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"table": args.table, "argv": sys.argv[1:], "rows": results}, indent=2))


if __name__ == "__main__":
    main()
