"""Ahead-of-time compilation of captured launches for a GPU target, no GPU needed.

A launch captured with ``config.captured()`` is bound the way ``JITFunction.run``
binds it (Triton's own binder: dtypes, 16-byte alignment, integers equal to 1
or divisible by 16 all specialize exactly as on a device), compiled with
``triton.compile`` for a ``GPUTarget`` (Triton ships ``ptxas``), and read back:
shared memory from the kernel's metadata, registers and spills from the
``ptxas -v`` log, the tensor-core instruction from the PTX, and the main loop's
length from the SASS (``nvdisasm``).

Run this module only without ``TRITON_INTERPRET=1``: under the interpreter
``@triton.jit`` gives interpreted functions, which cannot be compiled.
"""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass

import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime import jit as triton_jit

from .config import FAMILIES, Launch

# (compute capability, shared memory per block the configs may use), from the
# families the tables claim: sm_80's configs also serve sm_86 / sm_89, whose
# opt-in limit (99 KB) is below the A100's 163 KB.
TARGETS = {name: (int(name[3:]), needs["shared_memory"]) for name, needs in FAMILIES.items()}


@dataclass
class KernelStats:
    """What the compiled code says about one launch on one target."""

    target: str
    shared_bytes: int
    shared_limit: int
    registers: int
    spill_store_bytes: int
    spill_load_bytes: int
    mma: str  # tensor-core instruction shape(s) in the PTX, "" when none
    loop_instructions: int  # SASS instructions on the shortest path through the main loop
    loop_spills: int  # local-memory loads and stores (spills) on that path
    instructions_per_logit: float  # thread-instructions of that path per logit element
    compile_seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def compile_launch(launch: Launch, target: str):
    """``triton.compile`` of the launch for ``target`` ("sm_80" / "sm_90")."""
    capability, _ = TARGETS[target]
    gpu = GPUTarget("cuda", capability, 32)
    backend = make_backend(gpu)
    kernel = launch.kernel
    binder = triton_jit.create_function_from_signature(kernel.signature, kernel.params, backend)
    kwargs = dict(launch.constexprs, **launch.options)
    bound_args, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound_args, specialization, options)
    src = ASTSource(kernel, signature, constexprs, attrs)
    return triton.compile(src, target=gpu, options=options.__dict__)


def inspect_launch(launch: Launch, target: str) -> KernelStats:
    """Compile the launch for ``target`` and read its resources and main loop.
    Compilation errors propagate."""
    _, limit = TARGETS[target]
    log = io.StringIO()
    start = time.perf_counter()
    with _ptxas_log(), contextlib.redirect_stdout(log):
        compiled = compile_launch(launch, target)
    seconds = time.perf_counter() - start
    ptxas = log.getvalue()
    if "Used" not in ptxas:
        raise RuntimeError(f"no ptxas -v log captured for {launch.kernel.__name__} on {target}")
    registers = _last_int(r"Used (\d+) registers", ptxas)
    stores = _last_int(r"(\d+) bytes spill stores", ptxas)
    loads = _last_int(r"(\d+) bytes spill loads", ptxas)
    sass = disassemble(compiled.asm["cubin"])
    path, loop_spills = main_loop_path(sass)
    cfg = launch.config
    per_logit = path * 32 * cfg.num_warps / (cfg.block_rows * cfg.block_items) if path else 0.0
    return KernelStats(
        target=target,
        shared_bytes=int(compiled.metadata.shared),
        shared_limit=limit,
        registers=registers,
        spill_store_bytes=stores,
        spill_load_bytes=loads,
        mma=mma_shapes(compiled.asm["ptx"]),
        loop_instructions=path,
        loop_spills=loop_spills,
        instructions_per_logit=round(per_logit, 2),
        compile_seconds=round(seconds, 2),
    )


@contextlib.contextmanager
def _ptxas_log():
    # Always compile: a cache hit would skip ptxas, its log and the compile time.
    old = knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile
    knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile = True, True
    try:
        yield
    finally:
        knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile = old


def _last_int(pattern: str, text: str) -> int:
    found = re.findall(pattern, text)
    return int(found[-1]) if found else 0


_MMA = re.compile(r"\b(wgmma\.mma_async\S*|mma\.sync\.aligned\S*)")


def mma_shapes(ptx: str) -> str:
    """Distinct tensor-core instructions, e.g. "wgmma.m64n64k16.f32.bf16.bf16"."""
    shapes = set()
    for instr in _MMA.findall(ptx):
        parts = [p for p in instr.split(".") if p not in ("sync", "aligned", "mma_async", "row", "col")]
        shapes.add(".".join(parts).rstrip(";"))
    return " ".join(sorted(shapes))


def disassemble(cubin: bytes) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([knobs.nvidia.nvdisasm.path, "-c", f.name], check=True, capture_output=True,
                              text=True).stdout


_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_TARGET = re.compile(r"`\((\.L_x_\d+)\)")
_MMA_SASS = ("HGMMA", "HMMA")


def main_loop_path(sass: str) -> tuple[int, int]:
    """(instructions, spill accesses) on the shortest path through the kernel's
    main loop: the first loop in the code holding a tensor-core instruction
    (or the largest loop when none does). The kernels put their main loop
    first; the loops after it (the exclusion correction, the rows that hold a
    target) run a few times a program. Rarely taken blocks inside it (top-k's
    insertion) fall off the shortest path, so this is the cost of the common
    iteration."""
    instrs: list[str] = []
    labels: dict[str, int] = {}
    for line in sass.splitlines():
        label = _LABEL.match(line.strip())
        if label:
            labels[label.group(1)] = len(instrs)
            continue
        m = _INSTR.search(line)
        if m:
            instrs.append(m.group(2))
    loops = []
    for i, text in enumerate(instrs):
        target = _TARGET.search(text)
        # head < i: every kernel ends in a one-instruction `BRA self` trap.
        if "BRA" in text and target and labels.get(target.group(1), i) < i:
            head = labels[target.group(1)]
            has_mma = any(op in t for t in instrs[head : i + 1] for op in _MMA_SASS)
            loops.append((has_mma, i - head, head, i))
    if not loops:
        return 0, 0
    with_mma = [loop for loop in loops if loop[0]]
    _, _, head, tail = min(with_mma, key=lambda loop: loop[2]) if with_mma else max(loops)
    path = _shortest_path(instrs, labels, head, tail)
    return len(path), sum(1 for k in path if _SPILL.search(instrs[k]))


_SPILL = re.compile(r"\b(STL|LDL)\b")


def _shortest_path(instrs, labels, head, tail) -> list:
    """Instruction indices of the shortest path from ``head`` to ``tail``."""
    inf = float("inf")
    dist = [inf] * (tail + 1)
    came = [-1] * (tail + 1)
    dist[head] = 1
    for k in range(head, tail):
        if dist[k] == inf:
            continue
        text = instrs[k]
        target = _TARGET.search(text)
        unconditional = (text.startswith("BRA") or text.startswith("EXIT")) and not text.startswith("@")
        if "BRA" in text and target:
            dest = labels.get(target.group(1), -1)
            if k < dest <= tail and dist[k] + 1 < dist[dest]:
                dist[dest], came[dest] = dist[k] + 1, k
        if not unconditional and dist[k] + 1 < dist[k + 1]:
            dist[k + 1], came[k + 1] = dist[k] + 1, k
    if dist[tail] == inf:
        return list(range(head, tail + 1))
    path, k = [], tail
    while k != -1:
        path.append(k)
        k = came[k]
    return path[::-1]
