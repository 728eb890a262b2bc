"""The lent-GPU run: correctness first, then the numbers, in one call.

    python -m benchmarks.gpu_validate [--out gpu-results] [--budget 480] [--dry-run]

Steps, in this order, each in its own process with its own time box (cut to
what the budget has left), each writing what it measured to ``OUT/<step>.json``
as soon as it ends, and the merged ``OUT/results.md`` rewritten after every
step, so a lease that ends early still leaves every finished step behind:

1. ``smoke`` (120 s): device and versions; the hard-input and property tests
   on the GPU (every kernel against the fp64 reference, every dtype, any
   layout, canaries around every buffer); the kernels at two real shapes;
   ``compute-sanitizer --tool memcheck`` on one small head and one ranking
   call where the tool is installed.
2. ``head`` (150 s): forward + backward, B = 12,800, N in {128,727, 201,957},
   d in {64, 256}, bf16: fused against plain torch (and cut-cross-entropy /
   Liger when installed), ms, TFLOP/s (6 B N d), peak extra GiB.
3. ``ranking`` (100 s): top-10 and target rank, 100,000 users x 201,957
   items, d = 64, bf16, fused against the chunked torch reference.
4. ``train`` (60 s): one SASRec step at Sports scale, fused head against the
   plain torch head.
5. ``tests`` (the rest): the GPU test tier, ``pytest -m gpu``.

It prints one markdown table last. ``--dry-run`` runs every step on the CPU
at tiny shapes (the kernels under the interpreter) with short boxes: CI runs
it so the script cannot rot.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

STEPS = (("smoke", 120), ("head", 150), ("ranking", 100), ("train", 60), ("tests", None))
DRY_BOXES = {"smoke": 120, "head": 120, "ranking": 120, "train": 60, "tests": 120}
ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_validate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu-results")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for all steps together")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, kernels under the interpreter")
    parser.add_argument("--step", help=argparse.SUPPRESS)  # one step, in its own process
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.step:
        return run_step(args.step, out, args.dry_run)
    start = time.monotonic()
    for name, box in STEPS:
        left = args.budget - (time.monotonic() - start)
        limit = DRY_BOXES[name] if args.dry_run else (left if box is None else min(box, left))
        if limit < 10:
            _save(out, name, {"status": "skipped: no time left in the budget"})
            continue
        began = time.monotonic()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        if args.dry_run:
            env["TRITON_INTERPRET"] = "1"
        cmd = [sys.executable, "-m", "benchmarks.gpu_validate", "--step", name, "--out", str(out)]
        cmd += ["--dry-run"] if args.dry_run else []
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=limit, capture_output=True, text=True)
            (out / f"{name}.log").write_text(proc.stdout + proc.stderr)
            if proc.returncode and not (out / f"{name}.json").exists():
                _save(out, name, {"status": f"failed (exit {proc.returncode}), see {name}.log"})
        except subprocess.TimeoutExpired as exc:
            (out / f"{name}.log").write_text(_text(exc.stdout) + _text(exc.stderr))
            _mark_timeout(out, name, limit)
        _merge(out, name, time.monotonic() - began)
    table = (out / "results.md").read_text()
    print(table)
    return 0


def _text(data) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def _save(out: Path, name: str, record: dict) -> None:
    (out / f"{name}.json").write_text(json.dumps(record, indent=1))


def _mark_timeout(out: Path, name: str, limit: float) -> None:
    path = out / f"{name}.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    record["status"] = f"cut at its {limit:.0f} s box (rows measured before that are kept)"
    _save(out, name, record)


def _merge(out: Path, name: str, seconds: float) -> None:
    """Rewrite results.json and results.md from every step's file."""
    merged = {}
    for step, _ in STEPS:
        path = out / f"{step}.json"
        if path.exists():
            merged[step] = json.loads(path.read_text())
    merged.setdefault(name, {})["seconds"] = round(seconds, 1)
    _save(out, name, merged[name])
    (out / "results.json").write_text(json.dumps(merged, indent=1))
    (out / "results.md").write_text(render(merged))


def render(merged: dict) -> str:
    """One markdown table of every measured row, the device on top."""
    device = merged.get("smoke", {}).get("device", {})
    lines = [f"GPU validation on {device.get('name', '?')} (capability {device.get('capability', '?')}, "
             f"torch {device.get('torch', '?')}, Triton {device.get('triton', '?')})", "",
             "| step | case | impl | ms | TFLOP/s | peak extra GiB | ratio vs fused | note |",
             "|---|---|---|---|---|---|---|---|"]
    for step, record in merged.items():
        rows = record.get("rows", [])
        fused_ms = {r["case"]: r["ms"] for r in rows if r.get("impl") == "fused" and r.get("ms")}
        for r in rows:
            ratio = r["ms"] / fused_ms[r["case"]] if r.get("ms") and fused_ms.get(r["case"]) else None
            lines.append(f"| {step} | {r['case']} | {r.get('impl', '')} | {_fmt(r.get('ms'))} | "
                         f"{_fmt(r.get('tflops'))} | {_fmt(r.get('peak_gib'))} | {_fmt(ratio)} | {r.get('note', '')} |")
        lines.append(f"| {step} | | | | | | | {record.get('status', 'done')}, {record.get('seconds', '?')} s |")
    return "\n".join(lines) + "\n"


def _fmt(x) -> str:
    if x is None:
        return ""
    return f"{x:.3g}" if isinstance(x, float) else str(x)


# --------------------------------------------------------------- the steps


def run_step(name: str, out: Path, dry: bool) -> int:
    import torch

    device = torch.device("cpu" if dry else "cuda")
    record = {"rows": [], "status": "running"}

    def flush():
        _save(out, name, record)

    flush()
    {"smoke": _smoke, "head": _head, "ranking": _ranking, "train": _train, "tests": _tests}[name](
        record, flush, device, dry)
    record["status"] = record.get("status_final", "done")
    flush()
    return 0


def _smoke(record, flush, device, dry):
    import torch
    import triton

    info = {"torch": torch.__version__, "triton": triton.__version__, "name": "cpu (dry run)"}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1),
                    smem_optin=getattr(props, "shared_memory_per_block_optin", None))
    record["device"] = info
    flush()
    selection = ["tests/ops/test_hard_inputs.py", "tests/ops/test_properties_ce.py",
                 "tests/ops/test_properties_ranking.py"]
    if not dry:
        selection += ["tests/ops/test_gpu_real_shapes.py"]
    else:
        selection = ["tests/ops/test_hard_inputs.py::test_autocast_rounds_the_query_once"]
    record["rows"].append(_pytest_row("correctness", selection + ["-m", "not slow"]))
    flush()
    sanitizer = shutil.which("compute-sanitizer") or next(
        (p for p in ("/usr/local/cuda/bin/compute-sanitizer",) if os.path.exists(p)), None)
    if device.type == "cuda" and sanitizer:
        code = ("import torch, tfllmer_fast as tf; h = torch.randn(37, 64, device='cuda', dtype=torch.bfloat16, "
                "requires_grad=True); e = torch.randn(301, 64, device='cuda', dtype=torch.bfloat16, "
                "requires_grad=True); t = torch.randint(0, 301, (37,), device='cuda'); "
                "tf.normalized_softmax_ce(h, e, t, impl='triton').backward(); "
                "ex = (torch.arange(0, 38 * 3, 3, device='cuda')[:38], torch.randint(0, 301, (111,), device='cuda')); "
                "tf.target_rank(h.detach(), e.detach(), t, exclude=ex, impl='triton'); "
                "tf.topk_scores(h.detach(), e.detach(), 10, exclude=ex, impl='triton'); torch.cuda.synchronize()")
        proc = subprocess.run([sanitizer, "--tool", "memcheck", "--error-exitcode", "3", sys.executable, "-c", code],
                              cwd=ROOT, capture_output=True, text=True, timeout=100)
        errors = [line for line in proc.stdout.splitlines() if "ERROR SUMMARY" in line]
        record["rows"].append({"case": "compute-sanitizer memcheck (head fwd+bwd, rank, top-k)",
                               "note": errors[-1] if errors else f"exit {proc.returncode}"})
    else:
        record["rows"].append({"case": "compute-sanitizer memcheck", "note": "not run: no tool or no GPU"})
    flush()


def _pytest_row(case: str, args: list) -> dict:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-disable",
                           "-rs", *args], cwd=ROOT, capture_output=True, text=True)
    tail = [line for line in proc.stdout.splitlines() if " passed" in line or " failed" in line or "error" in line]
    return {"case": case, "note": (tail[-1] if tail else f"exit {proc.returncode}") +
            f" ({time.monotonic() - start:.0f} s)"}


def _measure(fn, device, repeats=5):
    """(median ms, peak extra GiB) of ``fn()``, CUDA-synchronized."""
    from tfllmer_fast.timing import peak_extra_memory, time_ms

    fn()
    with peak_extra_memory(device) as mem:
        fn()
    ms = time_ms(fn, device, repeats=repeats, warmup=1)
    peak = None if mem["bytes"] is None else round(mem["bytes"] / 2**30, 3)
    return ms, peak


def _head(record, flush, device, dry):
    import torch
    import torch.nn.functional as F

    from benchmarks.common import head_inputs
    from tfllmer_fast import normalized_softmax_ce
    from tfllmer_fast.reference import plain_normalized_ce

    T = 0.05
    impls = {
        "fused": lambda h, e, t: normalized_softmax_ce(h, e, t, temperature=T, impl="triton"),
        "plain_torch": lambda h, e, t: plain_normalized_ce(h, e, t, temperature=T),
    }
    try:
        from cut_cross_entropy import linear_cross_entropy

        impls["cut_cross_entropy"] = lambda h, e, t: linear_cross_entropy(h / T, F.normalize(e, dim=-1), t)
    except ImportError:
        pass
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        impls["liger"] = lambda h, e, t: liger_fused_linear_cross_entropy(h / T, F.normalize(e, dim=-1), t)
    except ImportError:
        pass
    shapes = [(16, 256, 16)] if dry else [(12_800, 201_957, 64), (12_800, 128_727, 64), (12_800, 201_957, 256),
                                          (12_800, 128_727, 256)]
    dtype = torch.bfloat16
    for B, N, d in shapes:
        hidden, items, targets = head_inputs(B, N, d, dtype, device)
        for name, fn in impls.items():
            h = hidden.clone().requires_grad_()
            e = items.clone().requires_grad_()

            def step():
                h.grad = e.grad = None
                fn(h, e, targets).backward()

            row = {"case": f"head fwd+bwd B={B} N={N} d={d} {str(dtype).replace('torch.', '')}", "impl": name}
            try:
                ms, peak = _measure(step, device, repeats=1 if dry else 5)
                row.update(ms=round(ms, 3), tflops=round(6 * B * N * d / (ms * 1e-3) / 1e12, 1),
                           peak_gib=peak)
            except torch.cuda.OutOfMemoryError:
                row["note"] = "out of memory"
            del h, e
            if device.type == "cuda":
                torch.cuda.empty_cache()
            record["rows"].append(row)
            flush()


def _ranking(record, flush, device, dry):
    import torch

    from tfllmer_fast import target_rank, topk_scores

    users, N, d = (16, 300, 16) if dry else (100_000, 201_957, 64)
    dtype = torch.bfloat16
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(users, d, generator=gen).to(device, dtype)
    items = torch.randn(N, d, generator=gen).to(device, dtype)
    targets = torch.randint(0, N, (users,), generator=gen).to(device)
    lengths = torch.randint(0, 20, (users,), generator=gen)
    indptr = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]).to(device)
    exclude = (indptr, torch.randint(0, N, (int(indptr[-1]),), generator=gen).to(device))
    case = f"{users} users x {N} items d={d} {str(dtype).replace('torch.', '')}, history excluded"
    calls = {
        "top-10": lambda impl: topk_scores(hidden, items, 10, exclude=exclude, impl=impl),
        "target rank": lambda impl: target_rank(hidden, items, targets, exclude=exclude, impl=impl),
    }
    for what, call in calls.items():
        for impl, name in (("triton", "fused"), ("torch", "chunked_torch")):
            row = {"case": f"{what}, {case}", "impl": name}
            try:
                ms, peak = _measure(lambda: call(impl), device, repeats=1 if dry or impl == "torch" else 3)
                row.update(ms=round(ms, 2), tflops=round(2 * users * N * d / (ms * 1e-3) / 1e12, 1), peak_gib=peak)
            except torch.cuda.OutOfMemoryError:
                row["note"] = "out of memory"
            record["rows"].append(row)
            flush()


def _train(record, flush, device, dry):
    import torch

    from benchmarks.bench_train_step import _step_fn
    from benchmarks.common import DATASET_STATS

    num_items, batch = (500, 8) if dry else (DATASET_STATS["sports"][1], 256)
    for head in ("fused", "plain_torch"):
        row = {"case": f"SASRec train step N={num_items} batch={batch}x50 d=64", "impl": head}
        try:
            step = _step_fn(head, num_items, batch, device.type, device.type == "cuda")
            ms, peak = _measure(step, device, repeats=1 if dry else 5)
            row.update(ms=round(ms, 2), peak_gib=peak)
        except torch.cuda.OutOfMemoryError:
            row["note"] = "out of memory"
        record["rows"].append(row)
        flush()


def _tests(record, flush, device, dry):
    if dry:
        record["rows"].append(_pytest_row("GPU tier (dry run: the head module tests)", ["tests/test_head.py"]))
    else:
        record["rows"].append(_pytest_row("GPU tier: pytest -m gpu tests benchmarks", ["-m", "gpu", "tests",
                                                                                         "benchmarks"]))
    flush()


if __name__ == "__main__":
    sys.exit(main())
