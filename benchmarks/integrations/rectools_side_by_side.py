"""RecTools' own softmax loss beside the fused adapter, side by side.

Two tables (markdown on stdout, every row also in the JSON file):

``beauty``: SASRec on S3-Rec Beauty, leave-one-out (valid = each user's
second-to-last item, test = the last), full ranking with the viewed items
filtered. Each row trains with RecTools' own trainer (``fit_partial``, one
epoch at a time) and stops early on valid NDCG@10 or at ``--epochs``; the
test metrics come from the best valid epoch's weights. RecTools' row ranks
with its own ``TorchRanker``, the fused rows with ``topk_scores``.

``synthetic``: one training step of the loss alone (forward + backward with
the model's item table as a parameter) over N items at RecTools' default
SASRec sizes (n_factors 256, session_max_len 100, batch 128), where RecTools'
``_calc_softmax_loss`` needs the (B, L, N) logits.

Every row runs in its own subprocess, so its peak RSS is its own
(``resource.getrusage``). Run from the repository root::

    python -m benchmarks.integrations.rectools_side_by_side beauty --epochs 4
    python -m benchmarks.integrations.rectools_side_by_side synthetic --num-items 1000000
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BEAUTY = ROOT.parent / "shared" / "data" / "Beauty.txt"
ROWS = {
    "rectools_softmax": "RecTools loss=\"softmax\" (dense logits)",
    "fused_plain": "FusedSASRecModel, PLAIN_CE (= RecTools' softmax)",
    "fused_normalized": "FusedSASRecModel, HeadOptions() (normalized items)",
}


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _last_per_user(df):
    from rectools import Columns

    last = df.groupby(Columns.User).cumcount(ascending=False) == 0
    return df[~last], df[last]


def beauty_worker(args) -> dict:
    import torch
    from pytorch_lightning import Trainer
    from rectools import Columns
    from rectools.dataset import Dataset
    from rectools.metrics import NDCG, HitRate, calc_metrics
    from rectools.models import SASRecModel

    from tfllmer_fast import HeadOptions
    from tfllmer_fast.integrations.rectools import FusedSASRecModel, s3rec_interactions

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    df = s3rec_interactions(Path(args.data))
    history, test = _last_per_user(df)  # test = last item, its input = everything before
    train, valid = _last_per_user(history)
    train_ds, history_ds = Dataset.construct(train), Dataset.construct(history)

    def trainer():
        return Trainer(max_epochs=1, min_epochs=1, deterministic=True, enable_progress_bar=False,
                       enable_model_summary=False, logger=False, enable_checkpointing=False, devices=1,
                       accelerator="cpu", num_sanity_val_steps=0)

    sizes = dict(n_factors=args.n_factors, n_blocks=args.n_blocks, n_heads=args.n_heads,
                 session_max_len=args.session_max_len, batch_size=args.batch_size, lr=args.lr,
                 dropout_rate=args.dropout, deterministic=True, get_trainer_func=trainer)
    if args.row == "rectools_softmax":
        model = SASRecModel(loss="softmax", **sizes)
    elif args.row == "fused_plain":
        model = FusedSASRecModel(**sizes)
    else:
        model = FusedSASRecModel(head_options=HeadOptions(), **sizes)
    metrics = {"ndcg@10": NDCG(k=10), "hr@10": HitRate(k=10)}

    def evaluate(dataset, target, seen):
        reco = model.recommend(target[Columns.User].unique(), dataset, k=10, filter_viewed=True)
        return calc_metrics(metrics, reco, target, prev_interactions=seen)

    best, best_state, epoch_s, log, wait = -1.0, None, [], [], 0
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        model.fit_partial(train_ds, min_epochs=1, max_epochs=1)
        epoch_s.append(time.perf_counter() - start)
        score = evaluate(train_ds, valid, train)
        log.append({"epoch": epoch, "s": round(epoch_s[-1], 1), "valid_ndcg@10": round(score["ndcg@10"], 5)})
        print(json.dumps(log[-1]), file=sys.stderr, flush=True)
        if score["ndcg@10"] > best:
            best, wait = score["ndcg@10"], 0
            best_state = copy.deepcopy(model.torch_model.state_dict())
        else:
            wait += 1
            if wait >= args.patience:
                break
    model.torch_model.load_state_dict(best_state)
    result = evaluate(history_ds, test, history)
    return {
        "row": args.row, "label": ROWS[args.row], "epochs_run": len(epoch_s),
        "best_epoch": max(log, key=lambda r: r["valid_ndcg@10"])["epoch"],
        "early_stopped": len(epoch_s) < args.epochs, "valid_ndcg@10": best,
        "test_ndcg@10": result["ndcg@10"], "test_hr@10": result["hr@10"],
        "s_per_epoch": sum(epoch_s) / len(epoch_s), "peak_rss_gib": peak_rss_gib(), "log": log,
        "users": int(df[Columns.User].nunique()), "items": int(df[Columns.Item].nunique()),
    }


def synthetic_worker(args) -> dict:
    import torch
    from rectools.models.nn.transformers.lightning import TransformerLightningModule

    from tfllmer_fast.integrations.rectools import fused_softmax_loss

    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    B, L, d, N = args.batch_size, args.session_max_len, args.n_factors, args.num_items
    # The model's item table: row 0 the padding id, as RecTools lays it out.
    table = torch.nn.Parameter(torch.randn(N + 1, d, generator=gen) * d ** -0.5)
    hidden = torch.randn(B, L, d, generator=gen).requires_grad_()
    y = torch.randint(1, N + 1, (B, L), generator=gen)
    w = torch.ones(B, L)
    base = peak_rss_gib()

    def step():
        table.grad = hidden.grad = None
        if args.row == "rectools_softmax":
            loss = TransformerLightningModule._calc_softmax_loss(hidden @ table.T, y, w)
        else:
            loss = fused_softmax_loss(hidden, table, y, w)
        loss.backward()
        return float(loss.detach())

    start = time.perf_counter()
    loss = step()
    step_s = time.perf_counter() - start
    return {"row": args.row, "label": ROWS[args.row], "batch_size": B, "session_max_len": L, "n_factors": d,
            "num_items": N, "loss": loss, "step_s": step_s, "peak_rss_gib": peak_rss_gib(),
            "inputs_rss_gib": base, "logits_gib_at_batch": B * L * (N + 1) * 4 / 2**30}


def run_rows(args, rows: list[tuple[str, list[str]]]) -> list[dict]:
    results = []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    for row, extra in rows:
        cmd = [sys.executable, "-m", "benchmarks.integrations.rectools_side_by_side", args.table, "--worker",
               "--row", row, *sys.argv[2:], *extra]
        out = subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    return results


def beauty_table(results: list[dict], args) -> str:
    lines = [f"SASRec on {Path(args.data).stem} ({results[0]['users']} users, {results[0]['items']} items), leave-one-out, "
             f"full ranking; n_factors {args.n_factors}, {args.n_blocks} blocks, {args.n_heads} heads, "
             f"session_max_len {args.session_max_len}, batch {args.batch_size}, lr {args.lr}, dropout "
             f"{args.dropout}, seed {args.seed}, early stop patience {args.patience} on valid NDCG@10, "
             f"cap {args.epochs} epochs, CPU {args.threads} threads", "",
             "| loss | epochs run (best) | early stop | valid NDCG@10 | test NDCG@10 | test HR@10 | s/epoch "
             "| peak RSS GiB |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['label']} | {r['epochs_run']} ({r['best_epoch']}) | "
                     f"{'yes' if r['early_stopped'] else 'no (cap)'} | {r['valid_ndcg@10']:.4f} | "
                     f"{r['test_ndcg@10']:.4f} | {r['test_hr@10']:.4f} | {r['s_per_epoch']:.1f} | "
                     f"{r['peak_rss_gib']:.2f} |")
    return "\n".join(lines)


def synthetic_table(results: list[dict], args) -> str:
    lines = [f"One loss step (forward + backward, item table a parameter), N = {args.num_items:,} items, "
             f"d = {args.n_factors}, session_max_len {args.session_max_len}, CPU {args.threads} threads", "",
             "| loss | batch | (B, L, N) logits GiB | step s | peak RSS GiB | RSS over inputs GiB |",
             "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['label']} | {r['batch_size']} | {r['logits_gib_at_batch']:.1f} | {r['step_s']:.1f} | "
                     f"{r['peak_rss_gib']:.2f} | {r['peak_rss_gib'] - r['inputs_rss_gib']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("table", choices=["beauty", "synthetic"])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--row", choices=list(ROWS), help=argparse.SUPPRESS)
    parser.add_argument("--rows", default=None, help="comma-separated rows, NAME or NAME:BATCH (default: all "
                        "three for beauty; RecTools, fused at RecTools' batch and fused at --batch-size for "
                        "synthetic)")
    parser.add_argument("--json", default=None, help="where to write the rows (default rectools_<table>.json)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", default=str(BEAUTY))
    parser.add_argument("--epochs", type=int, default=4, help="beauty: the epoch cap")
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--n-factors", type=int, default=None, help="default 64 (beauty), 256 (synthetic)")
    parser.add_argument("--n-blocks", type=int, default=2)
    parser.add_argument("--n-heads", type=int, default=2)
    parser.add_argument("--session-max-len", type=int, default=None, help="default 50 (beauty), 100 (synthetic)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--dense-batch-size", type=int, default=2,
                        help="synthetic: RecTools' batch when its logits at --batch-size would not fit")
    parser.add_argument("--max-dense-gib", type=float, default=20.0,
                        help="synthetic: run RecTools' row at --batch-size only if 3 logit-sized tensors fit")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--num-items", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    beauty = args.table == "beauty"
    args.n_factors = args.n_factors or (64 if beauty else 256)
    args.session_max_len = args.session_max_len or (50 if beauty else 100)
    if args.worker:
        print(json.dumps((beauty_worker if beauty else synthetic_worker)(args)))
        return
    default = ",".join(ROWS) if beauty else f"rectools_softmax,fused_plain:{args.dense_batch_size},fused_plain"
    rows = []
    for spec in (args.rows or default).split(","):
        name, _, batch = spec.partition(":")
        if name not in ROWS:
            raise SystemExit(f"--rows: unknown row {name!r}; the rows are {', '.join(ROWS)}")
        extra = ["--batch-size", batch] if batch else []
        # Logits, their softmax (saved for backward) and the logits' gradient.
        dense_gib = 3 * args.batch_size * args.session_max_len * (args.num_items + 1) * 4 / 2**30
        if not beauty and name == "rectools_softmax" and dense_gib > args.max_dense_gib:
            print(f"RecTools' softmax at batch {args.batch_size} needs ~{dense_gib:.0f} GiB of logits, softmax "
                  f"and gradient; it runs at batch {args.dense_batch_size}", file=sys.stderr)
            extra = ["--batch-size", str(args.dense_batch_size)]
        rows.append((name, extra))
    results = run_rows(args, rows)
    table = (beauty_table if beauty else synthetic_table)(results, args)
    print(table)
    path = Path(args.json or f"rectools_{args.table}.json")
    path.write_text(json.dumps({"args": vars(args), "rows": results, "table": table}, indent=1))
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
