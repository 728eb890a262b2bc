"""Command line: ``tfllmer-fast <command>``. Parsing and calls only.

A user error (a missing or malformed file, an option out of range, settings
that do not match a run being resumed) prints one ``error: ...`` line and
exits with status 2; ``--debug`` or ``TFLLMER_FAST_DEBUG=1`` shows the
traceback instead. Option defaults and ranges come from the configuration
dataclasses, so ``--help`` and validation cannot disagree with the library.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

import torch

from ..distributed.runtime import init_from_env, rank_world, shutdown
from .config import DEFAULT_ALPHA, RANDOM_TABLE_LR_SCALE, CFConfig, DataConfig, ItemInitConfig, RunConfig, TrainConfig
from .embed import POOLINGS, EmbedConfig
from .limits import check_limit, describe_limit

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
USAGE_EXIT = 2
# What a user can cause with files and option values; anything else is a bug
# and keeps its traceback.
USER_ERRORS = (ValueError, OSError)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(USAGE_EXIT, f"error: {self.prog}: {message}\n")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each default, except None: such an option's help says what it means."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _field(cls, name) -> dataclasses.Field:
    return {f.name: f for f in dataclasses.fields(cls)}[name]


def _checked_type(f: dataclasses.Field, kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        try:
            check_limit(f, value, "value")
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value

    parse.__name__ = kind.__name__
    return parse


def _option(parser, flag: str, cls, name: str, help: str, kind=None, **kwargs) -> None:
    """``flag`` for the dataclass field ``cls.name``: its default, its type
    (``kind`` where the default is None) and its allowed range, all read from
    the field."""
    f = _field(cls, name)
    kind = kind or (type(f.default) if f.default is not None else str)
    limit = describe_limit(f)
    if f.metadata.get("choices"):
        kwargs.setdefault("choices", f.metadata["choices"])
    elif limit:
        help = f"{help} ({limit})"
    kwargs.setdefault("type", _checked_type(f, kind) if f.metadata else kind)
    parser.add_argument(flag, default=kwargs.pop("default", f.default), help=help, dest=name, **kwargs)


def _int_at_least(low: int):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected int, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"value must be >= {low}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


def _existing_file(option: str, path) -> None:
    if path is not None and not Path(path).is_file():
        raise FileNotFoundError(f"{option}: no such file: {path}")


def _demo(args) -> int:
    from .demo import run_demo

    print(run_demo(device=args.device, epochs=args.epochs, head_items=args.items, head_batch=args.batch))
    return 0


def _head_demo(args) -> int:
    from .demo import format_head_demo, head_demo

    dtype = _DTYPES[args.dtype]
    rows = head_demo(args.items, args.batch, args.dim, args.device, dtype)
    print(format_head_demo(rows, args.items, args.batch, args.dim, dtype))
    return 0


def run_config_from(args) -> RunConfig:
    """The validated ``RunConfig`` that ``train``'s options describe."""
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    train = TrainConfig(**{k: v for k, v in vars(args).items() if k in train_fields and k != "model_options"},
                        model_options={} if args.dropout is None else {"dropout": args.dropout})
    init = getattr(args, "init", "recpca")  # ablate sets each run's own
    return RunConfig(DataConfig(args.path, args.split, args.k_core, args.min_rating),
                     ItemInitConfig(init, args.features, args.embed_model, args.template, args.beta, args.top_k),
                     train).validate()


def _train(args) -> int:
    from .pipeline import run

    config = run_config_from(args)
    config.train.device = init_from_env(config.train.device)  # under torchrun: join the process group
    _existing_file("--data", config.data.path)
    _existing_file("--features", config.items.features)
    rank = rank_world()[0]
    try:
        result = run(config, out_dir=args.out, resume=args.resume)
    except BaseException:
        shutdown(wait=False)  # the other ranks may never reach a barrier
        raise
    shutdown()
    if rank != 0:
        return 0
    print(json.dumps({"valid": result["valid"], "test": result["test"], "best_epoch": result["best_epoch"]}, indent=2))
    return 0


def _ablate(args) -> int:
    from .ablation import run_ablation

    config = run_config_from(args)
    _existing_file("--data", config.data.path)
    _existing_file("--features", config.items.features)
    print(run_ablation(config, args.seeds, args.out, betas=args.betas, top_ks=args.top_ks).read_text())
    return 0


def _train_cf(args) -> int:
    from .cf import run_cf
    from .data import read_interactions

    fields = {f.name for f in dataclasses.fields(CFConfig)}
    config = CFConfig(**{k: v for k, v in vars(args).items() if k in fields}).validate()
    _existing_file("--data", args.data)
    result = run_cf(config, read_interactions(args.data), out_dir=args.out)
    print(json.dumps({"valid": result["valid"], "test": result["test"], "best_epoch": result["best_epoch"]}, indent=2))
    return 0


def _profile(args) -> int:
    from .profiling import profile_training

    _existing_file("--data", args.data)
    print(profile_training(args.data, model=args.model, steps=args.steps, batch_size=args.batch_size,
                           device=args.device, trace=args.trace))
    return 0


def _plot(args) -> int:
    from .plots import load_run, plot_runs

    labels = args.labels or [None] * len(args.runs)
    if len(labels) != len(args.runs):
        raise ValueError(f"--labels: {len(labels)} labels for {len(args.runs)} runs")
    runs = [load_run(d, label) for d, label in zip(args.runs, labels)]
    try:
        print(plot_runs(runs, args.out))
    except ImportError:
        raise ValueError("plot needs matplotlib: pip install matplotlib") from None
    return 0


def _embed(args) -> int:
    import time

    from .embed import embed_items

    if args.multi_hot is None and not args.model:
        raise ValueError("embed: --model is needed (or --multi-hot COLUMN for token columns)")
    # Every option's dest is its EmbedConfig field.
    config = EmbedConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(EmbedConfig)})
    config.model = config.model or ""
    tic = time.perf_counter()
    manifest = embed_items(args.items, config, args.out, multi_hot_column=args.multi_hot)
    print(f"{args.out}: {manifest['count']} items x {manifest['dims']} dims from {manifest['model']} in "
          f"{time.perf_counter() - tic:.1f} s (manifest {Path(args.out).with_suffix('.json')})")
    return 0


def _bench_report(args) -> int:
    from .bench_report import report

    _existing_file("file", args.file)
    print(report(args.file))
    return 0


def _add_sam_options(parser, cls) -> None:
    """The sharpness-aware options, which ``TrainConfig`` and ``CFConfig`` share."""
    _option(parser, "--sam", cls, "sam", "sharpness-aware steps: off, plain SAM, or item-wise SAM (EISAM)")
    _option(parser, "--sam-rho", cls, "sam_rho", "SAM perturbation radius")
    _option(parser, "--sam-exponent", cls, "sam_exponent", "item-wise SAM: radius ~ (training count + 1) ** -exponent")


def _add_run_options(parser, *, ablation: bool) -> None:
    """The options of one run (``train``), or of every run of an ablation,
    which sets the initialization, the normalization and the seed itself."""
    _option(parser, "--data", DataConfig, "path", "S3-Rec .txt or RecBole .inter file", required=True)
    _option(parser, "--split", DataConfig, "split", "leave-one-out or chronological split")
    _option(parser, "--k-core", DataConfig, "k_core", "keep users and items with at least k interactions (0: all)")
    _option(parser, "--min-rating", DataConfig, "min_rating", "RecBole .inter: keep interactions rated at least "
            "this (default: keep all)", kind=float)
    if not ablation:
        _option(parser, "--init", ItemInitConfig, "init", "item table initialization")
    _option(parser, "--features", ItemInitConfig, "features", ".npy from tfllmer-fast embed (or any .npy/.pt in the "
            "data's item order), item2attributes.json, or an item table with --embed-model",
            **({"required": True} if ablation else {}))
    _option(parser, "--embed-model", ItemInitConfig, "embed_model",
            "with an item table as --features: embed its texts with this model (as tfllmer-fast embed does)")
    _option(parser, "--template", ItemInitConfig, "template", "with --embed-model: the item text template")
    _option(parser, "--beta", ItemInitConfig, "beta", "Rec-PCA graph filter strength")
    _option(parser, "--top-k", ItemInitConfig, "top_k", "neighbours per item in the co-occurrence graph")
    _option(parser, "--model", TrainConfig, "model", "sequential backbone")
    _option(parser, "--epochs", TrainConfig, "epochs", "most epochs")
    _option(parser, "--patience", TrainConfig, "patience", "stop after this many epochs without a better valid NDCG@10")
    _option(parser, "--batch-size", TrainConfig, "batch_size", "training sequences per step")
    _option(parser, "--lr", TrainConfig, "lr", "Adam learning rate of the backbone")
    _option(parser, "--item-lr", TrainConfig, "item_lr", "Adam learning rate of the item table "
            f"(default: {RANDOM_TABLE_LR_SCALE:g} x --lr for a random table, --lr for one from features)", kind=float)
    _option(parser, "--weight-decay", TrainConfig, "weight_decay", "Adam weight decay")
    _option(parser, "--temperature", TrainConfig, "temperature", "logit temperature")
    _option(parser, "--loss-on", TrainConfig, "loss_on", "positions that take the loss")
    _option(parser, "--impl", TrainConfig, "impl", "head implementation")
    _option(parser, "--diagnostics-sample", TrainConfig, "diagnostics_sample",
            "validation queries for the per-epoch diagnostics in epochs.jsonl (0: off)")
    _option(parser, "--diagnostics-m", TrainConfig, "diagnostics_m", "effective-set size for the diagnostics")
    _option(parser, "--head-share", TrainConfig, "head_share",
            "share of the training interactions held by the head items (the rest are the long tail)")
    _add_sam_options(parser, TrainConfig)
    parser.add_argument("--dropout", type=float, help="backbone dropout (default: the model's own)")
    parser.add_argument("--freeze-items", action="store_true", help="keep the initial item table fixed")
    parser.add_argument("--include-history", dest="exclude_history", action="store_false",
                        help="do not exclude the user's earlier items when ranking")
    parser.add_argument("--device", default=_default_device(), help="torch device")
    if ablation:
        parser.add_argument("--out", default="runs/ablation", help="directory of the runs and the table")
        return
    _option(parser, "--seed", TrainConfig, "seed", "random seed")
    parser.add_argument("--no-normalize", dest="normalize", action="store_false",
                        help="plain dot-product head (the 'w/o norm' ablation)")
    parser.add_argument("--out", default="runs/latest", help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt (same settings)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tfllmer-fast", description="Large-catalog sequential recommendation",
                     formatter_class=_Formatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors too")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = sub.add_parser("demo", formatter_class=_Formatter,
                          help="train SASRec (random vs Rec-PCA init) on built-in data, then time the head")
    demo.add_argument("--epochs", type=_int_at_least(1), default=None,
                      help="training epochs per run (default: the demo's own, enough to converge)")
    demo.add_argument("--items", type=_int_at_least(1), default=50_000, help="catalog size for the head timing")
    demo.add_argument("--batch", type=_int_at_least(1), default=1024, help="query rows for the head timing")
    demo.add_argument("--device", default=_default_device(), help="torch device")
    demo.set_defaults(func=_demo)

    head = sub.add_parser("head-demo", formatter_class=_Formatter, help="fused vs plain torch head on one batch")
    head.add_argument("--items", type=_int_at_least(1), default=100_000, help="catalog size N")
    head.add_argument("--batch", type=_int_at_least(1), default=1024, help="query rows B")
    head.add_argument("--dim", type=_int_at_least(1), default=64, help="embedding width d")
    head.add_argument("--dtype", choices=sorted(_DTYPES), default="fp32", help="input dtype")
    head.add_argument("--device", default=_default_device(), help="torch device")
    head.set_defaults(func=_head_demo)

    train = sub.add_parser("train", formatter_class=_Formatter,
                           help="train and evaluate a model; writes OUT/metrics.json")
    _add_run_options(train, ablation=False)
    train.set_defaults(func=_train)

    ablate = sub.add_parser("ablate", formatter_class=_Formatter,
                            help="random / PCA / Rec-PCA (TF-LLMER) / Rec-PCA w/o norm over seeds; "
                                 "writes OUT/ablation.md")
    _add_run_options(ablate, ablation=True)
    ablate.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="one run per variant and seed")
    ablate.add_argument("--betas", type=float, nargs="*", default=[], help="also TF-LLMER at these betas")
    ablate.add_argument("--top-ks", type=_int_at_least(1), nargs="*", default=[],
                        help="also TF-LLMER with these graph sizes")
    ablate.set_defaults(func=_ablate)

    cf = sub.add_parser("train-cf", formatter_class=_Formatter,
                        help="collaborative filtering (MF / LightGCN; BPR, DirectSpec, DirectSpec+ or full softmax) "
                             "on users' item sets; writes OUT/metrics.json")
    cf.add_argument("--data", required=True, help="S3-Rec .txt or RecBole .inter file (order is ignored)")
    for flag, name, text in (
        ("--model", "model", "backbone"), ("--loss", "loss", "training loss"), ("--dim", "dim", "embedding width"),
        ("--layers", "layers", "LightGCN propagation layers"), ("--batch-size", "batch_size", "pairs per step"),
        ("--lr", "lr", "Adam learning rate"), ("--weight-decay", "weight_decay", "Adam weight decay"),
        ("--epochs", "epochs", "most epochs"),
        ("--patience", "patience", "stop after this many epochs without a better valid NDCG@10"),
        ("--eval-every", "eval_every", "validate every this many epochs"),
        ("--tau-0", "tau_0", "DirectSpec+ temperature of pairs within --max-distance"),
        ("--tau-1", "tau_1", "DirectSpec+ temperature of the other pairs"),
        ("--max-distance", "max_distance", "DirectSpec+ graph distance K on the user-item graph"),
        ("--temperature", "temperature", "softmax logit temperature"),
        ("--test-share", "test_share", "share of each user's items held out for testing"),
        ("--valid-share", "valid_share", "share of the remaining items held out for validation"),
        ("--head-share", "head_share", "share of the training interactions held by the head items"),
        ("--seed", "seed", "random seed (split and training)"),
    ):
        _option(cf, flag, CFConfig, name, text)
    _option(cf, "--alpha", CFConfig, "alpha", "DirectSpec / DirectSpec+ step (default: "
            + ", ".join(f"{v:g} for {k}" for k, v in DEFAULT_ALPHA.items()) + ")", kind=float)
    _add_sam_options(cf, CFConfig)
    cf.add_argument("--device", default=_default_device(), help="torch device")
    cf.add_argument("--out", default="runs/latest-cf", help="run directory")
    cf.set_defaults(func=_train_cf)

    prof = sub.add_parser("profile", formatter_class=_Formatter, help="time the phases of a few training steps")
    prof.add_argument("--data", required=True, help="S3-Rec .txt or RecBole .inter file")
    _option(prof, "--model", TrainConfig, "model", "sequential backbone")
    prof.add_argument("--steps", type=_int_at_least(1), default=10, help="timed steps")
    _option(prof, "--batch-size", TrainConfig, "batch_size", "training sequences per step")
    prof.add_argument("--device", default=_default_device(), help="torch device")
    prof.add_argument("--trace", help="write a Chrome trace (torch.profiler) to this file")
    prof.set_defaults(func=_profile)

    plot = sub.add_parser("plot", formatter_class=_Formatter,
                          help="loss, NDCG@10 and diagnostics per epoch of one or more runs, as a PNG")
    plot.add_argument("runs", nargs="+", help="run directories (each with epochs.jsonl)")
    plot.add_argument("--out", default="runs.png", help="image file to write")
    plot.add_argument("--labels", nargs="+", help="one legend label per run (default: the directory names)")
    plot.set_defaults(func=_plot)

    emb = sub.add_parser("embed", formatter_class=_Formatter,
                         help="item embeddings from item text (sentence-transformers or transformers); writes "
                              "OUT.npy and its manifest OUT.json")
    emb.add_argument("--items", required=True, help="item table: RecBole .item, .csv / .tsv with a header, or .jsonl")
    emb.add_argument("--out", required=True, help="embeddings .npy (the manifest goes beside it as .json)")
    _option(emb, "--id-column", EmbedConfig, "id_column", "the item id column (default: item_id, else the first)")
    _option(emb, "--template", EmbedConfig, "template",
            "text per item over the columns, e.g. '{movie_title} ({release_year}). Genres: {class}' "
            "(default: every column joined)")
    emb.add_argument("--multi-hot", metavar="COLUMN", default=None,
                     help="instead of text embeddings: the multi-hot rows of this space-separated token column")
    _option(emb, "--model", EmbedConfig, "model", "model directory or name", default=None)
    _option(emb, "--backend", EmbedConfig, "backend", "auto: sentence-transformers where the directory is one")
    emb.add_argument("--pooling", choices=POOLINGS, default=None,
                     help="transformers backend: mean, cls or last (the last real token, for decoders; "
                          "default: mean)")
    _option(emb, "--prompt", EmbedConfig, "prompt", "text put before every item text (an instruction)")
    emb.add_argument("--normalize", action="store_true", help="L2-normalize the vectors (default: keep them raw)")
    _option(emb, "--batch-size", EmbedConfig, "batch_size", "texts per forward pass")
    _option(emb, "--max-length", EmbedConfig, "max_length", "tokens per text at most")
    _option(emb, "--chunk-items", EmbedConfig, "chunk_items", "texts per saved chunk (a stopped run resumes)")
    _option(emb, "--dtype", EmbedConfig, "dtype", "model dtype (auto: bf16 on CUDA, fp32 on CPU)")
    emb.add_argument("--device", default=_default_device(), help="torch device")
    emb.set_defaults(func=_embed)

    rep = sub.add_parser("bench-report", formatter_class=_Formatter,
                         help="markdown tables from a pytest-benchmark JSON file")
    rep.add_argument("file", help="pytest-benchmark --benchmark-json output")
    rep.set_defaults(func=_bench_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        if args.debug or os.environ.get("TFLLMER_FAST_DEBUG", "0") not in ("", "0"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_EXIT


if __name__ == "__main__":
    sys.exit(main())
