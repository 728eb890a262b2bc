"""Launch configuration shared by the Triton kernels.

One fixed default config per head width keeps the first call cheap and the
behaviour reproducible; ``TFLLMER_FAST_AUTOTUNE=1`` swaps in ``triton.autotune``
over a short list instead.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

# Work for one program stays aligned to this many items/rows, whatever block the
# autotuner picks, so the partial-result buffers never depend on the config.
SPLIT_ALIGN = 256


@dataclass(frozen=True)
class BlockConfig:
    block_rows: int
    block_items: int
    num_warps: int
    num_stages: int

    def as_triton(self, rows_key: str, items_key: str) -> triton.Config:
        return triton.Config(
            {rows_key: self.block_rows, items_key: self.block_items},
            num_warps=self.num_warps,
            num_stages=self.num_stages,
        )


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def autotune_enabled() -> bool:
    return os.environ.get("TFLLMER_FAST_AUTOTUNE", "0") == "1"


def block_d(dim: int) -> int:
    # tl.dot needs every tile side >= 16.
    return max(16, triton.next_power_of_2(dim))


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def target_programs(device: torch.device) -> int:
    """Programs to aim for so every SM gets a few; small under the interpreter so
    that tests still exercise the split-and-merge path."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return 4 * _sm_count(index)
    return 8


def split_count(work_units: int, other_programs: int, device: torch.device) -> int:
    """How many ways to split ``work_units`` aligned chunks so that
    ``other_programs * splits`` fills the device."""
    wanted = -(-target_programs(device) // max(other_programs, 1))
    return max(1, min(wanted, work_units))


def aligned_chunk(total: int, splits: int, align: int) -> int:
    """Chunk length (a multiple of ``align``) covering ``total`` in ``splits`` pieces."""
    per = -(-total // splits)
    return -(-per // align) * align


def split_work(total: int, align: int, other_programs: int, device: torch.device) -> tuple[int, int]:
    """(chunk length, number of chunks) splitting ``total`` into ``align``-aligned
    chunks so that ``other_programs * chunks`` fills the device; no chunk is empty."""
    splits = split_count(-(-total // align), other_programs, device)
    per_split = aligned_chunk(total, splits, align)
    return per_split, -(-total // per_split)


_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def dot_dtype(dtype: torch.dtype):
    return _TL_DTYPES[dtype]


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs follow torch's own matmul setting, so fp32 stays as exact as
    torch unless the user allowed TF32."""
    if dtype != torch.float32:
        return "tf32"
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def upcast_dot() -> bool:
    """The interpreter computes bf16 tl.dot wrongly (seen with Triton 3.9). A
    product of two bf16 or fp16 values is exact in fp32, so an fp32 dot of the
    already-rounded operands gives what a tensor-core dot with fp32 accumulation
    gives."""
    return interpreting()


def for_width(defaults: dict, interpreter: BlockConfig, dim: int) -> BlockConfig:
    """The fixed config for a head width: the smallest listed width >= dim."""
    if interpreting():
        return interpreter
    for width in sorted(defaults):
        if dim <= width:
            return defaults[width]
    return BlockConfig(block_rows=32, block_items=32, num_warps=8, num_stages=2)


_AUTOTUNED = {}


def autotuned(kernel, configs: list, key: list):
    """``triton.autotune`` over ``configs`` (BLOCK_B / BLOCK_N), built once per kernel."""
    if kernel not in _AUTOTUNED:
        _AUTOTUNED[kernel] = triton.autotune(
            configs=[c.as_triton("BLOCK_B", "BLOCK_N") for c in configs], key=key
        )(kernel)
    return _AUTOTUNED[kernel]
