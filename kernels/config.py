"""Launch configuration shared by the Triton kernels.

Each kernel has one ``KernelTable``: a fixed default config per size (the head
width, or K for top-k), a short autotune list, and the interpreter's config.
Launchers pick from it through ``pick`` and launch through ``launch``; the
compile gate (``tfllmer_fast.kernels.gate``) enumerates the same tables and
captures the same launches, so a config cannot reach users without having
been compiled for sm_80 and sm_90. ``TFLLMER_FAST_AUTOTUNE=1`` swaps the fixed
default for ``triton.autotune`` over the table's list.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import triton
import triton.language as tl

# Work for one program stays aligned to this many items/rows, whatever block the
# autotuner picks, so the partial-result buffers never depend on the config.
SPLIT_ALIGN = 256

# Passed explicitly: the kernels count on fused multiply-adds (the exp2
# arguments are one FFMA each), and Triton 3.9 warns when the default is used.
COMPILE_OPTIONS = {"enable_fp_fusion": True}


@dataclass(frozen=True)
class BlockConfig:
    block_rows: int
    block_items: int
    num_warps: int
    num_stages: int
    # 0: ptxas decides. Left alone, ptxas caps some 4-warp kernels at 168
    # registers (room for three blocks per SM) and spills a few bytes to stay
    # there; 255 lifts the cap where the gate saw that (sm_80 top-k).
    max_registers: int = 0

    @property
    def options(self) -> dict:
        out = dict(num_warps=self.num_warps, num_stages=self.num_stages, **COMPILE_OPTIONS)
        if self.max_registers:
            out["maxnreg"] = self.max_registers
        return out

    def as_triton(self) -> triton.Config:
        return triton.Config(
            {"BLOCK_B": self.block_rows, "BLOCK_N": self.block_items},
            num_warps=self.num_warps,
            num_stages=self.num_stages,
            maxnreg=self.max_registers or None,
        )

    @property
    def label(self) -> str:
        regs = f" r{self.max_registers}" if self.max_registers else ""
        return f"{self.block_rows}x{self.block_items} w{self.num_warps} s{self.num_stages}{regs}"


INTERPRETER = BlockConfig(block_rows=16, block_items=32, num_warps=1, num_stages=1)


OPERANDS = ("16bit", "tf32", "tf32x3")


@dataclass(frozen=True, eq=False)
class KernelTable:
    """Every config a launcher can pick for one kernel.

    ``defaults[(arch, operands)][size]`` is the fixed config for a size (the head
    width, or K for top-k) on an architecture family ("sm_90": wgmma and 227 KB
    of shared memory; "sm_80": mma.sync, sized for the 99 KB of sm_86 / sm_89
    so that every 8.x card can use it) and an operand kind ("16bit" for bf16 /
    fp16, "tf32" and "tf32x3" for fp32, see ``dot_precision``). A size uses the
    config of the smallest listed size >= it; larger sizes are not served.
    """

    defaults: dict = field(default_factory=dict)
    autotune: bool = True  # whether TFLLMER_FAST_AUTOTUNE applies (its grid must not depend on the config)
    interpreter: BlockConfig = INTERPRETER

    def max_size(self, arch: str, operands: str) -> int:
        """The largest size served on ``arch`` with ``operands``."""
        return max(self.defaults[(arch, operands)])

    def default(self, size: int, arch: str, operands: str) -> BlockConfig:
        by_size = self.defaults[(arch, operands)]
        for limit in sorted(by_size):
            if size <= limit:
                return by_size[limit]
        raise ValueError(f"size {size} is above the largest served on {arch} with {operands} operands ({max(by_size)})")

    def candidates(self, size: int, arch: str, operands: str) -> list:
        """What autotuning tries: the default for ``size`` and the next wider
        size's default of the same family, a short list the compile gate's
        full tier covers."""
        by_size = self.defaults[(arch, operands)]
        out = [self.default(size, arch, operands)]
        wider = [by_size[s] for s in sorted(by_size) if s >= size and by_size[s] not in out]
        return out + wider[:1] if self.autotune else out


_FORCED: contextvars.ContextVar = contextvars.ContextVar("tfllmer_fast_forced_config", default=None)
_CAPTURED: contextvars.ContextVar = contextvars.ContextVar("tfllmer_fast_captured_launches", default=None)


@dataclass(frozen=True)
class Choice:
    """A launcher's config: ``config`` fixed, or None when ``triton.autotune``
    picks among ``candidates``."""

    config: BlockConfig | None
    candidates: tuple


@dataclass
class Launch:
    """One kernel launch as a launcher would issue it (grid, bound arguments)."""

    kernel: Any
    grid: tuple
    args: tuple
    constexprs: dict
    config: BlockConfig

    @property
    def options(self) -> dict:
        return self.config.options


@contextlib.contextmanager
def forced(cfg: BlockConfig):
    """Launchers use ``cfg`` instead of their table's choice (the compile gate)."""
    token = _FORCED.set(cfg)
    try:
        yield
    finally:
        _FORCED.reset(token)


@contextlib.contextmanager
def captured():
    """Launchers record their launches in the yielded list instead of running
    them (the compile gate binds and compiles them ahead of time)."""
    launches: list = []
    token = _CAPTURED.set(launches)
    try:
        yield launches
    finally:
        _CAPTURED.reset(token)


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def autotune_enabled() -> bool:
    return os.environ.get("TFLLMER_FAST_AUTOTUNE", "0") == "1"


# The families the tables claim, each with what a device needs to use them:
# compute capabilities, and the opt-in shared memory per block the configs
# were sized for (the compile gate compiles every config for the family's
# target against that limit). Other devices (7.x, 10.x, 12.x today) are not
# served: the ops take the torch path there and say so once.
FAMILIES = {
    "sm_90": {"capabilities": ((9, 0),), "shared_memory": 232_448},
    "sm_80": {"capabilities": ((8, 0), (8, 6), (8, 7), (8, 9)), "shared_memory": 101_376},
}


def family(capability: tuple[int, int], shared_memory_optin: int) -> str | None:
    """The table family for a device of ``capability`` with
    ``shared_memory_optin`` bytes of shared memory per block, or None."""
    for name, needs in FAMILIES.items():
        if tuple(capability) in needs["capabilities"] and shared_memory_optin >= needs["shared_memory"]:
            return name
    return None


@functools.lru_cache(maxsize=None)
def _device_family(index: int) -> str | None:
    props = torch.cuda.get_device_properties(index)
    optin = getattr(props, "shared_memory_per_block_optin", None) or getattr(props, "shared_memory_per_block", 0)
    return family((props.major, props.minor), optin)


def arch(device: torch.device) -> str | None:
    """The table family of a CUDA device (see ``FAMILIES``), None when no table serves it."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _device_family(index)


def operand_kind(dtype: torch.dtype) -> str:
    """The table's operand kind of a compute dtype: "16bit", "tf32" or "tf32x3"."""
    return "16bit" if dtype != torch.float32 else dot_precision(dtype)


def served(table: KernelTable, size: int, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the table has a config for ``size`` on this device and dtype (the
    interpreter serves every size some table lists)."""
    if interpreting() or device.type != "cuda":
        return size <= max(max(by_size) for by_size in table.defaults.values())
    name = arch(device)
    return name is not None and size <= table.max_size(name, operand_kind(dtype))


def pick(table: KernelTable, size: int, device: torch.device, dtype: torch.dtype) -> Choice:
    """The config to launch with (or the autotune candidates)."""
    forced_cfg = _FORCED.get()
    if forced_cfg is not None:
        return Choice(forced_cfg, (forced_cfg,))
    if interpreting():
        return Choice(table.interpreter, (table.interpreter,))
    name = arch(device)
    if name is None:
        raise RuntimeError(f"no kernel table serves {torch.cuda.get_device_name(device)} (families: "
                           f"{', '.join(FAMILIES)}); the ops take the torch path there")
    candidates = tuple(table.candidates(size, name, operand_kind(dtype)))
    if autotune_enabled() and table.autotune:
        return Choice(None, candidates)
    return Choice(candidates[0], candidates)


def launch(kernel, choice: Choice, grid: Callable[[dict], tuple], args: tuple, meta: dict, *,
           tune_key: tuple = ()) -> None:
    """Launch ``kernel`` with ``choice.config``, or autotuned over its
    candidates. ``grid`` maps the constexprs (with BLOCK_B / BLOCK_N) to the grid."""
    cfg = choice.config
    with _device_of(args):
        if cfg is None:
            _autotuned(kernel, choice.candidates, tuple(tune_key))[grid](*args, **meta, **COMPILE_OPTIONS)
            return
        constexprs = dict(meta, BLOCK_B=cfg.block_rows, BLOCK_N=cfg.block_items)
        record = Launch(kernel, tuple(grid(constexprs)), args, constexprs, cfg)
        captured_launches = _CAPTURED.get()
        if captured_launches is not None:
            captured_launches.append(record)
            return
        kernel[record.grid](*args, **constexprs, **record.options)


def _device_of(args: tuple):
    """The tensors' CUDA device made current for the launch: Triton launches on
    the current device, and tensors on cuda:1 while cuda:0 is current would be
    read through the wrong context."""
    for arg in args:
        if isinstance(arg, torch.Tensor) and arg.is_cuda:
            return torch.cuda.device(arg.device)
    return contextlib.nullcontext()


# Canary elements on each side of every output buffer under ``guarded_outputs``.
GUARD = 64
_GUARDED: contextvars.ContextVar = contextvars.ContextVar("tfllmer_fast_guarded_outputs", default=None)


def _canary(dtype: torch.dtype):
    return float("nan") if dtype.is_floating_point else -(2**31) + 7


def output(shape, dtype: torch.dtype, device, *, zero: bool = False) -> torch.Tensor:
    """A buffer a launcher hands a kernel to write. Under ``guarded_outputs`` it
    sits between canaries (NaN, or a sentinel integer) that are checked after
    the call, so a write past either end fails a test instead of corrupting
    memory unseen."""
    buffers = _GUARDED.get()
    if buffers is None:
        return torch.zeros(shape, dtype=dtype, device=device) if zero else torch.empty(shape, dtype=dtype, device=device)
    count = 1
    for n in shape:
        count *= n
    flat = torch.full((count + 2 * GUARD,), _canary(dtype), dtype=dtype, device=device)
    view = flat[GUARD : GUARD + count].view(shape)
    if zero:
        view.zero_()
    buffers.append(flat)
    return view


class GuardedOutputs(list):
    """The guarded buffers of the calls made so far."""

    def check(self) -> None:
        """Raise if any canary changed."""
        for i, flat in enumerate(self):
            canary = torch.cat([flat[:GUARD], flat[-GUARD:]])
            intact = canary.isnan().all() if flat.dtype.is_floating_point else (canary == _canary(flat.dtype)).all()
            if not bool(intact):
                raise AssertionError(f"a kernel wrote outside output buffer {i} ({flat.numel() - 2 * GUARD} "
                                     f"elements of {flat.dtype})")


@contextlib.contextmanager
def guarded_outputs():
    """Launchers allocate their outputs between canaries (see ``output``); the
    yielded list's ``check()`` says whether any was overwritten."""
    buffers = GuardedOutputs()
    token = _GUARDED.set(buffers)
    try:
        yield buffers
    finally:
        _GUARDED.reset(token)


@functools.lru_cache(maxsize=None)
def _autotuned(kernel, candidates: tuple, key: tuple):
    return triton.autotune(configs=[c.as_triton() for c in candidates], key=list(key))(kernel)


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
    """The tensor-core mode for fp32 operands, following torch's own matmul
    setting: "highest" (torch's default) gets 3-pass TF32, whose error stays at
    the level of an fp32 FMA dot (tests/ops measure it against fp64) while
    keeping the tensor cores; "high" and "medium" allow one TF32 pass, as torch
    does. bf16 / fp16 ignore it."""
    if dtype != torch.float32:
        return "tf32"
    return "tf32x3" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def upcast_dot() -> bool:
    """The interpreter computes bf16 tl.dot wrongly (seen with Triton 3.9) and
    ignores ``input_precision``: under it, ``_tiles.mma`` emulates the GPU's
    operand rounding in an fp32 dot instead. A product of two bf16 or fp16
    values is exact in fp32, so that gives what a tensor-core dot with fp32
    accumulation gives."""
    return interpreting()
