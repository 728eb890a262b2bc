"""Benchmarks run with the Triton interpreter on CPU-only machines (CPU tier)."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
