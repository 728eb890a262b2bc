"""Command line: ``tfllmer-fast <command>``. Parsing and calls only."""

from __future__ import annotations

import argparse
import sys

import torch

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _demo(args) -> int:
    from .demo import format_head_demo, head_demo

    dtype = _DTYPES[args.dtype]
    rows = head_demo(args.items, args.batch, args.dim, args.device, dtype)
    print(format_head_demo(rows, args.items, args.batch, args.dim, dtype))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfllmer-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="fused vs plain torch head on one synthetic batch")
    demo.add_argument("--items", type=int, default=100_000, help="catalog size N")
    demo.add_argument("--batch", type=int, default=1024, help="query rows B")
    demo.add_argument("--dim", type=int, default=64)
    demo.add_argument("--dtype", choices=sorted(_DTYPES), default="fp32")
    demo.add_argument("--device", default=_default_device())
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
