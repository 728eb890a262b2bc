"""Command line: ``tfllmer-fast <command>``. Parsing and calls only."""

from __future__ import annotations

import argparse
import json
import logging
import sys

import torch

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _demo(args) -> int:
    from .demo import format_head_demo, format_training_demo, head_demo, training_demo

    print(format_training_demo(training_demo(epochs=args.epochs, device=args.device)))
    print()
    rows = head_demo(args.items, args.batch, 64, args.device, torch.float32)
    print(format_head_demo(rows, args.items, args.batch, 64, torch.float32))
    return 0


def _head_demo(args) -> int:
    from .demo import format_head_demo, head_demo

    dtype = _DTYPES[args.dtype]
    rows = head_demo(args.items, args.batch, args.dim, args.device, dtype)
    print(format_head_demo(rows, args.items, args.batch, args.dim, dtype))
    return 0


def _train(args) -> int:
    from .pipeline import config_for, run

    config = config_for(
        model=args.model, init=args.init, normalize=not args.no_normalize, epochs=args.epochs, device=args.device,
        seed=args.seed, temperature=args.temperature, patience=args.patience, batch_size=args.batch_size,
        loss_on=args.loss_on, freeze_items=args.freeze_items, exclude_history=not args.include_history,
        lr=args.lr, weight_decay=args.weight_decay,
        model_options={} if args.dropout is None else {"dropout": args.dropout},
    )
    result = run(args.data, config, features_path=args.features, beta=args.beta, split=args.split,
                 k_core=args.k_core, out_dir=args.out, resume=args.resume)
    print(json.dumps({"valid": result["valid"], "test": result["test"], "best_epoch": result["best_epoch"]}, indent=2))
    return 0


def _profile(args) -> int:
    from .profiling import profile_training

    print(profile_training(args.data, model=args.model, steps=args.steps, batch_size=args.batch_size,
                           device=args.device, trace=args.trace))
    return 0


def _bench_report(args) -> int:
    from .bench_report import report

    print(report(args.file))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfllmer-fast", description="Large-catalog sequential recommendation")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train SASRec (random vs Rec-PCA init) on built-in data, then time the head")
    demo.add_argument("--epochs", type=int, default=8)
    demo.add_argument("--items", type=int, default=100_000, help="catalog size for the head timing")
    demo.add_argument("--batch", type=int, default=1024, help="query rows for the head timing")
    demo.add_argument("--device", default=_default_device())
    demo.set_defaults(func=_demo)

    head = sub.add_parser("head-demo", help="fused vs plain torch head on one synthetic batch")
    head.add_argument("--items", type=int, default=100_000, help="catalog size N")
    head.add_argument("--batch", type=int, default=1024, help="query rows B")
    head.add_argument("--dim", type=int, default=64)
    head.add_argument("--dtype", choices=sorted(_DTYPES), default="fp32")
    head.add_argument("--device", default=_default_device())
    head.set_defaults(func=_head_demo)

    train = sub.add_parser("train", help="train and evaluate a model; writes OUT/metrics.json")
    train.add_argument("--data", required=True, help="S3-Rec .txt or RecBole .inter file")
    train.add_argument("--model", choices=["sasrec", "gru4rec", "bert4rec"], default="sasrec")
    train.add_argument("--init", choices=["random", "pca", "recpca"], default="random")
    train.add_argument("--features", help=".npy/.pt matrix or item2attributes.json")
    train.add_argument("--beta", type=float, default=0.3)
    train.add_argument("--no-normalize", action="store_true", help="plain dot-product head (the 'w/o norm' ablation)")
    train.add_argument("--split", choices=["loo", "time"], default="loo")
    train.add_argument("--k-core", type=int, default=0)
    train.add_argument("--epochs", type=int, default=100)
    train.add_argument("--patience", type=int, default=10)
    train.add_argument("--batch-size", type=int, default=256)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--weight-decay", type=float, default=0.0)
    train.add_argument("--temperature", type=float, default=1.0)
    train.add_argument("--dropout", type=float, help="backbone dropout (default: the model's own)")
    train.add_argument("--loss-on", choices=["all", "last"], default="all")
    train.add_argument("--freeze-items", action="store_true")
    train.add_argument("--include-history", action="store_true", help="do not exclude the user's earlier items")
    train.add_argument("--device", default=_default_device())
    train.add_argument("--out", default="runs/latest")
    train.add_argument("--seed", type=int, default=42)
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    train.set_defaults(func=_train)

    prof = sub.add_parser("profile", help="time the phases of a few training steps")
    prof.add_argument("--data", required=True)
    prof.add_argument("--model", choices=["sasrec", "gru4rec", "bert4rec"], default="sasrec")
    prof.add_argument("--steps", type=int, default=10)
    prof.add_argument("--batch-size", type=int, default=256)
    prof.add_argument("--device", default=_default_device())
    prof.add_argument("--trace", help="write a Chrome trace (torch.profiler) to this file")
    prof.set_defaults(func=_profile)

    rep = sub.add_parser("bench-report", help="markdown tables from a pytest-benchmark JSON file")
    rep.add_argument("file")
    rep.set_defaults(func=_bench_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
