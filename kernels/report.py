"""The static performance table: what the compiled sm_90 code implies on an
H100 before any GPU has run it.

For each kernel at its default config (bf16 and fp32 at d = 64 and 256, from
the same compile gate as CI): registers, shared memory, spills, the MMA
instruction, and the SASS instructions per logit element of the main loop;
then the work per call at the paper's shapes (head: B = 12,800 rows,
N = 201,957 items; ranking: 100,000 users) and the time floors it implies on
an H100 SXM: tensor-core FLOPs at peak, exponentials at the SFU's rate, and
instruction issue at four warp-instructions per SM per clock. The largest of
the three is the kernel's floor; a measured time can only be above it.

    python -m tfllmer_fast.kernels.report [--jobs 2] [--json gate.json]

Estimates, not measurements: labelled as such wherever they are quoted.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import gate

# H100 SXM5 at its 1.83 GHz boost clock: 132 SMs; dense tensor-core peaks of
# 989 TFLOP/s (bf16 / fp16) and 494 (TF32); 16 MUFU.EX2 per SM per clock; 4
# schedulers per SM issuing one warp-instruction (32 thread-instructions) a clock.
H100 = {"sms": 132, "clock_hz": 1.83e9, "tc_flops": {"16bit": 989e12, "tf32": 494e12, "tf32x3": 494e12 / 3},
        "exp_per_s": 132 * 16 * 1.83e9, "thread_instr_per_s": 132 * 4 * 32 * 1.83e9}
HEAD_ROWS, ITEMS, RANK_ROWS = 12_800, 201_957, 100_000
REPORT_DTYPES = ("bf16", "fp32-tf32", "fp32-highest")
REPORT_WIDTHS = (64, 256)
# kernel -> (query rows at the paper's shape, dots per logit, exponentials per logit)
WORK = {
    "normalized_lse_fwd": (HEAD_ROWS, 2, 1),
    "normalized_ce_item_grad": (HEAD_ROWS, 2, 1),
    "target_rank": (RANK_ROWS, 1, 0),
    "topk": (RANK_ROWS, 1, 0),
}


def selected() -> list:
    out = []
    for v in gate.variants("full"):
        flags = dict(v.flags)
        if not v.default or v.target != "sm_90" or v.dtype not in REPORT_DTYPES or v.dim not in REPORT_WIDTHS:
            continue
        if flags.get("compute_o") is False or flags.get("normalize_items") is False:
            continue  # the training path: o for dH, normalized items
        if v.kernel == "topk" and (flags["k"] != 16 or not flags["exclude"] or flags["nan"]):
            continue  # top-10 with seen items excluded, as the evaluation runs it
        if v.kernel == "target_rank" and flags["mode"] != "exclude":
            continue  # with seen items excluded, as the evaluation runs it
        out.append(v)
    return out


def floors(variant: gate.Variant, per_logit: float) -> dict:
    rows, dots, exps = WORK[variant.kernel]
    if variant.kernel == "normalized_lse_fwd" and not dict(variant.flags).get("compute_o", True):
        dots = 1
    logits = rows * ITEMS
    flops = 2.0 * logits * variant.dim * dots
    operands = gate._operands(variant.dtype)
    return {
        "flops": flops,
        "exps": float(logits * exps),
        "mma_ms": flops / H100["tc_flops"][operands] * 1e3,
        "exp_ms": logits * exps / H100["exp_per_s"] * 1e3,
        "issue_ms": logits * per_logit / H100["thread_instr_per_s"] * 1e3,
    }


def table(results: list, variants: list) -> str:
    lines = [
        "| kernel | d | dtype | config (rows x items, warps, stages) | regs | smem KiB | spill B | MMA "
        "| instr / logit | TFLOP / call | G exp / call | floor ms: MMA / SFU / issue | floor ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v, r in zip(variants, results):
        s = r["stats"]
        if s is None:
            lines.append(f"| {v.kernel} | {v.dim} | {v.dtype} | {v.config.label} | does not compile |" + " |" * 8)
            continue
        f = floors(v, s["instructions_per_logit"])
        mma = " ".join(sorted({m.split(".")[1] for m in s["mma"].split()})) or "-"
        lines.append(
            f"| {v.kernel} | {v.dim} | {v.dtype} | {v.config.label} | {s['registers']} | "
            f"{s['shared_bytes'] / 1024:.0f} | {s['spill_store_bytes']} | {mma} | {s['instructions_per_logit']:.2f} | "
            f"{f['flops'] / 1e12:.2f} | {f['exps'] / 1e9:.2f} | "
            f"{f['mma_ms']:.2f} / {f['exp_ms']:.2f} / {f['issue_ms']:.2f} | "
            f"{max(f['mma_ms'], f['exp_ms'], f['issue_ms']):.2f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tfllmer_fast.kernels.report",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", help="also write the gate's results here")
    args = parser.parse_args(argv)
    variants = selected()
    results = gate.run(variants, jobs=args.jobs)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    import triton

    print(f"Static estimates from the sm_90 code compiled by Triton {triton.__version__} "
          f"(`python -m tfllmer_fast.kernels.report`); head at B = {HEAD_ROWS:,}, N = {ITEMS:,}; "
          f"ranking at {RANK_ROWS:,} users x {ITEMS:,} items. Not measurements.\n")
    print(table(results, variants))
    return 0


if __name__ == "__main__":
    sys.exit(main())
