"""The compile gate: every kernel, every config its launcher can pick, compiled
ahead of time for sm_80 and sm_90 on a machine without a GPU.

The variants come from the kernels' own ``TABLE`` objects; each one is issued by
calling the real launcher on small CPU tensors under ``config.forced`` (the
config) and ``config.captured`` (record instead of run), so the arguments and
constexprs are exactly those of a launch. ``aot.inspect_launch`` then compiles
it and reads shared memory, registers, spills, tensor-core instructions and the
main loop's instructions per logit.

Tiers: ``ci`` is every launcher default at every width, in bf16 and fp32 (both
precisions torch can ask for), every flag (top-k's NaN-aware path at the
widest width, its worst case), both targets; ``full`` adds the autotune
lists, fp16, every top-k K and the NaN-aware path at every width (run it
before each kernel change).

    python -m tfllmer_fast.kernels.gate [--tier ci|full] [--jobs 2] [--json out.json]

exits non-zero when a variant fails a check. Run it without TRITON_INTERPRET=1.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import importlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import torch

from . import config

WIDTHS = (32, 64, 128, 256)
# (name, torch dtype, torch.set_float32_matmul_precision value)
DTYPES = {
    "bf16": (torch.bfloat16, "highest"),
    "fp16": (torch.float16, "highest"),
    "fp32-tf32": (torch.float32, "high"),
    "fp32-highest": (torch.float32, "highest"),
}
CI_DTYPES = ("bf16", "fp32-tf32", "fp32-highest")
TARGETS = tuple(sorted(config.FAMILIES))  # every family the tables claim is a compile target
# Odd sizes: no divisibility specialization on B or N, the general code path.
GATE_ROWS = 333
GATE_ITEMS = 1001
MAX_COMPILE_SECONDS = 30.0
# Spills outside the main loop's common iteration (its prologue, the tiles that
# hold a target, the epilogue) run a few times a program: a few hundred bytes
# there cost nothing measurable. In the loop itself none is allowed.
MAX_SPILL_BYTES = 512


@dataclass(frozen=True)
class KernelDriver:
    """How the gate reaches one kernel through its launcher."""

    name: str
    table: Callable[[], config.KernelTable]
    flags: dict  # flag name -> values the launchers pass
    size: Callable[[int, dict], int]  # (width, flags) -> the table's size key
    mma_rows: Callable[[config.BlockConfig], int]  # M of the kernel's dots
    drive: Callable  # (width, torch dtype, **flags) -> None; calls the launcher


def _inputs(dim, dtype, rows=GATE_ROWS, items=GATE_ITEMS):
    hidden = torch.randn(rows, dim).to(dtype)
    item_emb = torch.randn(items, dim).to(dtype)
    return hidden, item_emb, torch.ones(rows), torch.ones(items)


def _exclusion(rows, items, per_row=3):
    indptr = torch.arange(rows + 1) * per_row
    return indptr, torch.randint(0, items, (rows * per_row,)), per_row


def _drive_lse_fwd(dim, dtype, compute_o):
    hidden, item_emb, s, r = _inputs(dim, dtype)
    targets = torch.randint(0, item_emb.shape[0], (hidden.shape[0],))
    _module("normalized_lse_fwd").normalized_lse_forward(hidden, item_emb.contiguous(), s, targets,
                                                         compute_o=compute_o)


def _drive_item_grad(dim, dtype, normalize_items):
    hidden, item_emb, s, r = _inputs(dim, dtype)
    rows = hidden.shape[0]
    targets = torch.randint(0, item_emb.shape[0], (rows,))
    _module("normalized_ce_item_grad").normalized_ce_item_grad(
        hidden, item_emb.contiguous(), item_emb, s, r, torch.zeros(rows), torch.ones(rows), -torch.ones(rows),
        torch.full((rows,), -1e-4), targets, eps=1e-12, normalize_items=normalize_items,
    )


def _drive_target_rank(dim, dtype, mode):
    """``mode``: "count" (one table), "exclude" (with exclusion lists, as
    evaluation runs it), "nan" (the same, NaN-aware), "shard" (a shard's count
    against given target scores), "score" (the owner's target scores alone)."""
    hidden, item_emb, s, r = _inputs(dim, dtype)
    rows = hidden.shape[0]
    targets = torch.randint(0, item_emb.shape[0], (rows,))
    indptr, items, per_row = _exclusion(rows, item_emb.shape[0])
    exclude = (indptr, items.int(), torch.arange(rows).repeat_interleave(per_row).int())
    kwargs = {
        "count": {},
        "exclude": dict(exclude=exclude),
        "nan": dict(exclude=exclude, has_nan=True),
        "shard": dict(exclude=exclude, target_score=torch.zeros(rows)),
        "score": dict(count=False),
    }[mode]
    _module("target_rank").target_rank_counts(hidden, item_emb, r, targets, compute_dtype=dtype, **kwargs)


def _drive_topk(dim, dtype, k, exclude, nan):
    hidden, item_emb, s, r = _inputs(dim, dtype)
    excluded = _exclusion(*hidden.shape[:1], item_emb.shape[0]) if exclude else None
    _module("topk").topk_keys(hidden, item_emb, r, k, exclude=excluded, has_nan=nan, compute_dtype=dtype)


def _module(name: str):
    # By path: the package re-exports launchers under some of the same names.
    return importlib.import_module(f"{__package__}.{name}")


def _table(name: str):
    return lambda: _module(name).TABLE


def _topk_sizes():
    largest = _module("topk").max_k()
    return tuple(2**i for i in range(1, largest.bit_length()) if 2**i <= largest)


DRIVERS = (
    KernelDriver("normalized_lse_fwd", _table("normalized_lse_fwd"), {"compute_o": (True, False)},
                 lambda dim, flags: dim, lambda cfg: cfg.block_rows, _drive_lse_fwd),
    KernelDriver("normalized_ce_item_grad", _table("normalized_ce_item_grad"), {"normalize_items": (True, False)},
                 lambda dim, flags: dim, lambda cfg: cfg.block_items, _drive_item_grad),
    KernelDriver("target_rank", _table("target_rank"), {"mode": ("count", "exclude", "nan", "shard", "score")},
                 lambda dim, flags: dim, lambda cfg: cfg.block_rows, _drive_target_rank),
    # (exclude, nan): the NaN-aware path is compiled with exclusions, its heavier case.
    KernelDriver("topk", _table("topk"), {"k": None, "exclude_nan": ((False, False), (True, False), (True, True))},
                 lambda dim, flags: flags["k"], lambda cfg: cfg.block_rows, _drive_topk),
)


@dataclass(frozen=True)
class Variant:
    kernel: str
    target: str
    dtype: str
    dim: int
    flags: tuple  # ((name, value), ...)
    config: config.BlockConfig
    default: bool  # the launcher's fixed pick (False: an autotune entry)

    @property
    def id(self) -> str:
        flags = "".join(f"-{k}={v if isinstance(v, str) else int(v)}" for k, v in self.flags)
        cfg = self.config.label.replace(" ", "")
        return f"{self.kernel}-{self.target}-{self.dtype}-d{self.dim}{flags}-{cfg}{'' if self.default else '-tune'}"

    @property
    def driver(self) -> KernelDriver:
        return next(d for d in DRIVERS if d.name == self.kernel)


def _flag_sets(driver: KernelDriver, tier: str):
    if driver.name == "topk":
        sizes = _topk_sizes()
        if tier == "ci":
            # One K per distinct default config: the largest it serves.
            keys = set().union(*(set(by_k) for by_k in driver.table().defaults.values()))
            sizes = tuple(k for k in sizes if k in keys)
        return [(("k", k), ("exclude", x), ("nan", n)) for k in sizes for x, n in driver.flags["exclude_nan"]]
    sets = [()]
    for name, values in driver.flags.items():
        sets = [s + ((name, v),) for s in sets for v in values]
    return sets


def _operands(dtype_name: str) -> str:
    dtype, precision = DTYPES[dtype_name]
    with _matmul_precision(precision):
        return config.operand_kind(dtype)


@contextlib.contextmanager
def _matmul_precision(precision: str):
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def _served(dim: int, target: str, operands: str) -> bool:
    """Whether the kernels serve head width ``dim`` (the op layer's rule: every
    head and ranking table has a config for it)."""
    names = ("normalized_lse_fwd", "normalized_ce_item_grad", "target_rank")
    return all(dim <= _module(n).TABLE.max_size(target, operands) for n in names)


def _widest(target: str, operands: str) -> int:
    return max(dim for dim in WIDTHS if _served(dim, target, operands))


def variants(tier: str = "ci") -> list:
    """Every variant of the tier, in a stable order."""
    if tier not in ("ci", "full"):
        raise ValueError(f"tier must be 'ci' or 'full', got {tier!r}")
    dtypes = CI_DTYPES if tier == "ci" else tuple(DTYPES)
    out = []
    for driver in DRIVERS:
        table = driver.table()
        for flags in _flag_sets(driver, tier):
            for dim in WIDTHS:
                size = driver.size(dim, dict(flags))
                for dtype in dtypes:
                    for target in TARGETS:
                        if not _served(dim, target, _operands(dtype)):
                            continue  # the op layer takes the torch path there
                        if tier == "ci" and dict(flags).get("nan") and dim != _widest(target, _operands(dtype)):
                            continue  # the NaN-aware top-k at its worst case only: the widest served width
                        default = table.default(size, target, _operands(dtype))
                        configs = [default] if tier == "ci" else table.candidates(size, target, _operands(dtype))
                        for cfg in configs:
                            out.append(Variant(driver.name, target, dtype, dim, flags, cfg, cfg == default))
    return out


def capture(variant: Variant) -> config.Launch:
    """The launch the launcher issues for ``variant`` (on CPU tensors, not run)."""
    dtype, precision = DTYPES[variant.dtype]
    with _matmul_precision(precision), config.forced(variant.config), config.captured() as launches:
        variant.driver.drive(variant.dim, dtype, **dict(variant.flags))
    if len(launches) != 1:
        raise RuntimeError(f"{variant.id}: expected one launch, captured {len(launches)}")
    return launches[0]


def check(variant: Variant, stats: dict) -> list:
    """The gate's verdicts on one compiled variant: a list of failures."""
    failures = []
    if stats["shared_bytes"] > stats["shared_limit"]:
        failures.append(f"shared memory {stats['shared_bytes']} B > {stats['shared_limit']} B per block")
    if stats["loop_spills"]:
        failures.append(f"register spills in the main loop: {stats['loop_spills']} local loads / stores per iteration")
    spilled = stats["spill_store_bytes"] + stats["spill_load_bytes"]
    if spilled > MAX_SPILL_BYTES:
        failures.append(f"register spills: {stats['spill_store_bytes']} B stored, {stats['spill_load_bytes']} B loaded "
                        f"(> {MAX_SPILL_BYTES} B in all)")
    if not stats["mma"]:
        failures.append("no tensor-core instruction in the PTX")
    elif variant.target == "sm_90":
        rows, warpgroups = variant.driver.mma_rows(variant.config), max(variant.config.num_warps // 4, 1)
        if rows >= 64 and "wgmma" not in stats["mma"]:
            failures.append(f"sm_90 tile of {rows} rows without wgmma: {stats['mma']}")
        if "wgmma" in stats["mma"] and rows < 64 * warpgroups:
            failures.append(f"{warpgroups} warpgroups on a {rows}-row tile: each computes the whole tile")
    if stats["compile_seconds"] > MAX_COMPILE_SECONDS:
        failures.append(f"compile took {stats['compile_seconds']:.0f} s > {MAX_COMPILE_SECONDS:.0f} s")
    return failures


def run_one(variant: Variant) -> dict:
    from . import aot

    result = {"id": variant.id, "kernel": variant.kernel, "target": variant.target, "dtype": variant.dtype,
              "dim": variant.dim, "flags": dict(variant.flags), "config": variant.config.label,
              "default": variant.default, "stats": None, "error": None, "failures": []}
    try:
        stats = aot.inspect_launch(capture(variant), variant.target).as_dict()
    except Exception as exc:  # the gate reports every failure, it does not stop at the first
        result["error"] = f"{type(exc).__name__}: {str(exc).strip()[-2000:]}"
        result["failures"] = ["does not compile"]
        return result
    result["stats"] = stats
    result["failures"] = check(variant, stats)
    return result


def _worker_init(cache_dir: str):
    os.environ["TRITON_CACHE_DIR"] = cache_dir
    torch.set_num_threads(1)


def run(selected: list, jobs: int = 1, cache_dir: str | None = None) -> list:
    """Compile every variant (in ``jobs`` processes); results in input order.
    A fresh Triton cache makes the compile times honest."""
    if config.interpreting():
        raise RuntimeError("the compile gate needs TRITON_INTERPRET unset (the interpreter's kernels cannot be "
                           "compiled); run it in its own process")
    with tempfile.TemporaryDirectory() as fresh:
        cache = cache_dir or fresh
        if jobs <= 1:
            _worker_init(cache)
            return [run_one(v) for v in selected]
        with concurrent.futures.ProcessPoolExecutor(jobs, initializer=_worker_init, initargs=(cache,)) as pool:
            return list(pool.map(run_one, selected, chunksize=1))


def _search_grid(kernel: str) -> list:
    if kernel == "topk":
        rows, items = (16, 32, 64), (32, 64)
    else:
        rows, items = (64, 128), (32, 64, 128)
    return [config.BlockConfig(r, n, w, st) for r in rows for n in items for w in (4, 8) for st in (2, 3)]


def search(kernels: list, jobs: int) -> dict:
    """For each (kernel, target, operand kind, size): the passing grid config
    with the fewest main-loop instructions per logit (worst over the kernel's
    flags), preferring larger tiles within 5 %. What the tables are made from."""
    dtype_of = {"16bit": "bf16", "tf32": "fp32-tf32", "tf32x3": "fp32-highest"}
    selected = []
    for driver in DRIVERS:
        if driver.name not in kernels:
            continue
        flag_sets = _flag_sets(driver, "full" if driver.name != "topk" else "ci")
        for target in TARGETS:
            for operands, dtype in dtype_of.items():
                for dim in WIDTHS:
                    for flags in flag_sets:
                        for cfg in _search_grid(driver.name):
                            selected.append(Variant(driver.name, target, dtype, dim, flags, cfg, False))
    results = run(selected, jobs=jobs)
    groups: dict = {}
    for v, r in zip(selected, results):
        size = v.driver.size(v.dim, dict(v.flags))
        key = (v.kernel, v.target, _operands(v.dtype), size)
        groups.setdefault(key, {}).setdefault(v.config, []).append(r)
    best = {}
    for key, by_cfg in groups.items():
        scored = []
        for cfg, rs in by_cfg.items():
            if all(not r["failures"] for r in rs):
                scored.append((max(r["stats"]["instructions_per_logit"] for r in rs), cfg))
        if not scored:
            best[key] = None
            continue
        floor = min(cost for cost, _ in scored)
        near = [(cfg.block_rows * cfg.block_items, cfg.num_stages, -cost, cfg)
                for cost, cfg in scored if cost <= 1.05 * floor]
        choice = max(near, key=lambda x: x[:3])[3]
        best[key] = (choice, min(cost for cost, cfg in scored if cfg == choice))
    return best


def _print(results: list, out=sys.stdout) -> None:
    for r in results:
        s = r["stats"]
        if s:
            line = (f"smem {s['shared_bytes']:>6} regs {s['registers']:>3} spill {s['spill_store_bytes']:>5} "
                    f"{s['mma'] or '-':<38} {s['instructions_per_logit']:>6.2f}/logit {s['compile_seconds']:>5.1f}s")
        else:
            line = r["error"].splitlines()[-1][:150]
        status = "FAIL" if r["failures"] else "ok  "
        print(f"{status} {r['id']:<72} {line}", file=out)
        for failure in r["failures"]:
            print(f"       - {failure}", file=out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tfllmer_fast.kernels.gate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tier", choices=("ci", "full"), default="ci")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", help="write every result to this file")
    parser.add_argument("-k", dest="match", help="only variants whose id contains this string")
    parser.add_argument("--search", nargs="+", metavar="KERNEL",
                        help="search the config grid for these kernels and print table rows instead")
    args = parser.parse_args(argv)
    if args.search:
        for key, found in sorted(search(args.search, args.jobs).items(), key=str):
            print(*key, *(found if found else ("none passes",)))
        return 0
    selected = [v for v in variants(args.tier) if not args.match or args.match in v.id]
    start = time.perf_counter()
    results = run(selected, jobs=args.jobs)
    _print(results)
    failed = sum(bool(r["failures"]) for r in results)
    print(f"{len(results)} variants, {failed} failed, {time.perf_counter() - start:.0f} s wall")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 1 if failed or not results else 0


if __name__ == "__main__":
    sys.exit(main())
