"""RePlay's own SasRec CE against the tfllmer_fast adapter, side by side.

Two parts, each run in a fresh subprocess (so ``ru_maxrss`` is that run's
peak RSS):

* ``beauty``: S3-Rec Beauty.txt through RePlay's pipeline (LabelEncoder,
  LastNSplitter leave-one-out, ParquetModule, the default SasRec transforms,
  seen items filtered), ``SasRec.from_params`` trained by Lightning with
  RePlay's ``CE`` (dense metrics callback), with ``FusedCE`` (plain head,
  fused metrics callback) and with ``FusedCE(HeadOptions())`` (TF-LLMER head);
  early stopping on validation NDCG@10 within an epoch cap, the best epoch's
  weights on the test users: NDCG@10, HR@10 (RePlay's recall@10, the same
  number with one held-out item), s/epoch (training only), peak RSS.
* ``synthetic``: a catalog of ``--items`` items, RePlay's default SasRec size
  (``from_params``: d = 192, 4 heads, 2 blocks, L = 50), one training step
  (``forward_train`` + backward, the loss against the model's item table) with
  RePlay's CE and with FusedCE: step time, peak RSS and the peak above the
  model's own footprint. The dense CE runs at ``--dense-batch`` when its
  (B * L, N) buffers would not fit (their size is printed either way).

Prints markdown tables and writes JSON. CPU only here; GPU rows wait for a GPU.

    python benchmarks/integrations/replay_side_by_side.py beauty --max-epochs 4 --json beauty.json
    python benchmarks/integrations/replay_side_by_side.py synthetic --items 1000000 --batch 32 --dense-batch 4
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
VARIANTS = ("replay_ce", "fused_plain", "fused_tfllmer")
LABELS = {"replay_ce": "RePlay CE (dense logits, dense eval)", "fused_plain": "FusedCE, PLAIN_CE (fused eval)",
          "fused_tfllmer": "FusedCE, HeadOptions() (fused eval)"}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def prepare_beauty(source: Path, out: Path, max_len: int) -> dict:
    """Parquet splits for RePlay's ParquetModule, made with RePlay's own tools."""
    from tfllmer_fast.integrations.replay import s3rec_leave_one_out_parquet

    splits = s3rec_leave_one_out_parquet(source, out)
    return {"dir": str(splits.dir), "num_items": splits.num_items, "num_users": splits.num_users,
            "interactions": splits.interactions, "max_len": max_len}


def _schema(num_items: int, dim: int):
    from replay.data import FeatureHint, FeatureSource, FeatureType
    from replay.data.nn import TensorFeatureInfo, TensorFeatureSource, TensorSchema

    return TensorSchema([TensorFeatureInfo(
        name="item_id", is_seq=True, padding_value=num_items, cardinality=num_items, embedding_dim=dim,
        feature_type=FeatureType.CATEGORICAL, feature_hint=FeatureHint.ITEM_ID,
        feature_sources=[TensorFeatureSource(FeatureSource.INTERACTIONS, "item_id")])])


def _data_module(data: dict, schema, batch_size: int):
    from replay.data.nn import ParquetModule
    from replay.nn.transform import CopyTransform, GroupTransform, RenameTransform
    from replay.nn.transform.template import make_default_sasrec_transforms

    n, max_len, d = data["num_items"], data["max_len"], Path(data["dir"])
    transforms = make_default_sasrec_transforms(schema)
    evaluation = [RenameTransform({"item_id_mask": "padding_mask"}), CopyTransform({"item_id": "seen_ids"}),
                  GroupTransform({"feature_tensors": schema.names})]
    transforms["validate"], transforms["test"] = evaluation, copy.deepcopy(evaluation)
    held_out = {"item_id": {"shape": max_len, "padding": n}, "ground_truth": {"shape": 1, "padding": -1}}
    metadata = {"train": {"item_id": {"shape": max_len + 1, "padding": n}}, "validate": held_out, "test": held_out}
    return ParquetModule(batch_size=batch_size, metadata=metadata, transforms=transforms,
                         train_path=str(d / "train.parquet"), validate_path=str(d / "val.parquet"),
                         test_path=str(d / "test.parquet"))


def run_beauty(cfg: dict) -> dict:
    import lightning
    import torch
    from lightning.pytorch.callbacks import EarlyStopping
    from replay.nn.lightning import LightningModule
    from replay.nn.lightning.callback import ComputeMetricsCallback
    from replay.nn.lightning.optimizer import OptimizerFactory
    from replay.nn.lightning.postprocessor import SeenItemsFilter
    from replay.nn.sequential import SasRec

    from tfllmer_fast import HeadOptions
    from tfllmer_fast.integrations import replay as adapter

    torch.set_num_threads(cfg["threads"])
    lightning.seed_everything(cfg["seed"], verbose=False)
    data, variant, n = cfg["data"], cfg["variant"], cfg["data"]["num_items"]
    schema = _schema(n, cfg["dim"])
    model = SasRec.from_params(schema, embedding_dim=cfg["dim"], num_heads=cfg["heads"], num_blocks=cfg["blocks"],
                               max_sequence_length=data["max_len"], dropout=cfg["dropout"])
    optimizer = OptimizerFactory(learning_rate=cfg["lr"])
    metric_args = dict(metrics=["ndcg", "recall"], ks=[10], item_count=n,
                       postprocessors=[SeenItemsFilter(n, "seen_ids")], verbose=False)
    if variant == "replay_ce":
        module, metrics = LightningModule(model, optimizer), ComputeMetricsCallback(**metric_args)
    else:
        adapter.use_fused_ce(model, options=HeadOptions() if variant == "fused_tfllmer" else adapter.PLAIN_CE)
        module, metrics = adapter.FusedLightningModule(model, optimizer), adapter.FusedComputeMetricsCallback(**metric_args)

    class EpochTimer(lightning.Callback):
        def __init__(self):
            self.seconds = []

        def on_train_epoch_start(self, trainer, pl_module):
            self._start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            self.seconds.append(time.perf_counter() - self._start)

    class BestWeights(lightning.Callback):
        """The best validation epoch's weights, kept in memory (a checkpoint
        file would pickle RePlay's optimizer factory, which torch.load refuses)."""

        def __init__(self):
            self.score, self.state = -1.0, None

        def on_validation_end(self, trainer, pl_module):
            score = float(trainer.callback_metrics["ndcg@10"])
            if score > self.score:
                self.score, self.state = score, copy.deepcopy(pl_module.state_dict())

    timer, best = EpochTimer(), BestWeights()
    stop = EarlyStopping(monitor="ndcg@10", mode="max", patience=cfg["patience"])
    trainer = lightning.Trainer(accelerator="cpu", max_epochs=cfg["max_epochs"], logger=False,
                                enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                                callbacks=[metrics, timer, stop, best], num_sanity_val_steps=0)
    datamodule = _data_module(data, schema, cfg["batch"])
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    fit_seconds = time.perf_counter() - start
    module.load_state_dict(best.state)
    test = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    history = metrics.get_metrics("validate")
    return {"variant": variant, "epochs": len(timer.seconds), "early_stopped": bool(stop.stopped_epoch),
            "best_epoch": max(history, key=lambda e: history[e]["ndcg@10"]) + 1,
            "valid_ndcg10": {e + 1: round(m["ndcg@10"], 5) for e, m in history.items()},
            "test_ndcg10": test["ndcg@10"], "test_hr10": test["recall@10"],
            "s_per_epoch": sum(timer.seconds) / len(timer.seconds), "fit_seconds": fit_seconds,
            "peak_rss_GiB": peak_rss_bytes() / 2**30}


def run_synthetic(cfg: dict) -> dict:
    import torch
    from replay.nn.loss import CE
    from replay.nn.sequential import SasRec

    from tfllmer_fast.integrations import replay as adapter

    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    n, batch, max_len = cfg["items"], cfg["batch"], cfg["max_len"]
    model = SasRec.from_params(_schema(n, cfg["dim"]), embedding_dim=cfg["dim"], max_sequence_length=max_len)
    model.train()
    if cfg["variant"] == "fused_plain":
        adapter.use_fused_ce(model)
    else:
        assert isinstance(model.loss, CE)
    gen = torch.Generator().manual_seed(cfg["seed"])
    seq = torch.randint(0, n, (batch, max_len + 1), generator=gen)
    features = {"item_id": seq[:, :-1]}
    full = torch.ones(batch, max_len, dtype=torch.bool)

    def step() -> float:
        model.zero_grad(set_to_none=False)
        start = time.perf_counter()
        out = model.forward_train(features, full, seq[:, 1:, None], None, full[..., None])
        out["loss"].backward()
        return time.perf_counter() - start

    before = rss_bytes()
    times = [step() for _ in range(cfg["steps"] + 1)][1:]  # the first step allocates the gradients
    return {"variant": cfg["variant"], "batch": batch, "items": n, "dim": cfg["dim"], "step_s": min(times),
            "peak_rss_GiB": peak_rss_bytes() / 2**30, "peak_over_model_GiB": (peak_rss_bytes() - before) / 2**30,
            "dense_logits_GiB": batch * max_len * n * 4 / 2**30}


def _in_subprocess(kind: str, cfg: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                                      os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, __file__, "_worker", kind, json.dumps(cfg)], env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{kind} run {cfg.get('variant')} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def beauty(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare_beauty(args.data / "Beauty.txt", Path(tmp) / "beauty", args.max_len)
        rows = []
        for variant in args.variants:
            cfg = {"data": data, "variant": variant, "seed": args.seed, "dim": args.dim, "heads": args.heads,
                   "blocks": args.blocks, "dropout": args.dropout, "lr": args.lr, "batch": args.batch,
                   "max_epochs": args.max_epochs, "patience": args.patience, "threads": args.threads}
            rows.append(_in_subprocess("beauty", cfg))
            print(json.dumps(rows[-1]), file=sys.stderr)
    print(f"Beauty: {data['num_users']} users, {data['num_items']} items, {data['interactions']} interactions; "
          f"SasRec d={args.dim}, {args.heads} heads, {args.blocks} blocks, L={args.max_len}, dropout {args.dropout}, "
          f"batch {args.batch}, Adam lr {args.lr}, seed {args.seed}, {args.threads} CPU threads; "
          f"early stopping on valid NDCG@10 (patience {args.patience}), at most {args.max_epochs} epochs\n")
    print("| loss / eval | test NDCG@10 | test HR@10 | epochs (best) | early stop | s/epoch | peak RSS GiB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {LABELS[r['variant']]} | {r['test_ndcg10']:.4f} | {r['test_hr10']:.4f} | {r['epochs']} "
              f"({r['best_epoch']}) | {'yes' if r['early_stopped'] else 'no (cap)'} | {r['s_per_epoch']:.1f} | "
              f"{r['peak_rss_GiB']:.2f} |")
    return {"data": {k: v for k, v in data.items() if k != "dir"}, "settings": vars(args) | {"data": str(args.data)},
            "rows": rows}


def synthetic(args) -> dict:
    base = {"items": args.items, "dim": args.dim, "max_len": args.max_len, "seed": args.seed, "steps": args.steps,
            "threads": args.threads}
    rows = [_in_subprocess("synthetic", {**base, "variant": "fused_plain", "batch": args.batch})]
    dense_bytes = args.batch * args.max_len * args.items * 4
    plan = [("replay_ce", args.dense_batch)] if args.dense_batch else [("replay_ce", args.batch)]
    if args.dense_batch and args.dense_batch != args.batch:
        plan.append(("fused_plain", args.dense_batch))
    for variant, batch in plan:
        rows.append(_in_subprocess("synthetic", {**base, "variant": variant, "batch": batch}))
    for r in rows:
        print(json.dumps(r), file=sys.stderr)
    print(f"N = {args.items:,} items, SasRec from_params defaults (d={args.dim}, 4 heads, 2 blocks, L={args.max_len}), "
          f"one forward_train + backward, {args.threads} CPU threads. RePlay's CE at batch {args.batch} would hold "
          f"(B*L, N) fp32 logits of {dense_bytes / 2**30:.1f} GiB and as much again for each autograd buffer of "
          f"that shape\n")
    print("| loss | batch | step s | peak RSS GiB | peak over model GiB | (B*L, N) fp32 GiB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {LABELS[r['variant']].split(' (')[0]} | {r['batch']} | {r['step_s']:.2f} | {r['peak_rss_GiB']:.2f} | "
              f"{r['peak_over_model_GiB']:.2f} | {r['dense_logits_GiB']:.2f} |")
    return {"settings": vars(args) | {"data": str(args.data)}, "rows": rows}


def main(argv=None) -> None:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "_worker":
        kind, cfg = sys.argv[2], json.loads(sys.argv[3])
        print(json.dumps((run_beauty if kind == "beauty" else run_synthetic)(cfg)))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=("beauty", "synthetic"))
    parser.add_argument("--data", type=Path, default=DATA, help="folder with Beauty.txt (S3-Rec format)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--dim", type=int, default=None, help="embedding width (beauty 64, synthetic 192)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (beauty 128, synthetic 32)")
    beauty_args = parser.add_argument_group("beauty")
    beauty_args.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    beauty_args.add_argument("--heads", type=int, default=2)
    beauty_args.add_argument("--blocks", type=int, default=2)
    beauty_args.add_argument("--dropout", type=float, default=0.3)
    beauty_args.add_argument("--lr", type=float, default=1e-3)
    beauty_args.add_argument("--max-epochs", type=int, default=4)
    beauty_args.add_argument("--patience", type=int, default=2)
    synth_args = parser.add_argument_group("synthetic")
    synth_args.add_argument("--items", type=int, default=1_000_000)
    synth_args.add_argument("--dense-batch", type=int, default=None,
                            help="batch for RePlay's CE when its (B*L, N) buffers would not fit at --batch")
    synth_args.add_argument("--steps", type=int, default=1, help="timed steps after one warm-up step")
    args = parser.parse_args(argv)
    if args.dim is None:
        args.dim = 64 if args.part == "beauty" else 192
    if args.batch is None:
        args.batch = 128 if args.part == "beauty" else 32
    result = beauty(args) if args.part == "beauty" else synthetic(args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
