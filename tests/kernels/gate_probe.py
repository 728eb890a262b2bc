"""Two kernels the compile gate must reject, compiled in a process without
TRITON_INTERPRET (run as ``python -m tests.kernels.gate_probe``): one reads a
plain module float (the interpreter accepts it, the compiler does not), one
needs more shared memory than an H100 block has. Prints one JSON line per
kernel with the gate's verdicts."""

import json

import torch
import triton
import triton.language as tl
from tfllmer_fast.kernels import aot, config, gate

SCALE = 2.0  # a plain global: illegal inside @triton.jit


@triton.jit
def _reads_module_global(X, Y, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(Y + offs, tl.load(X + offs) * SCALE)


@triton.jit
def _oversized_dot(A, B, C, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    a = tl.load(A + offs[:, None] * BLOCK + offs[None, :])
    b = tl.load(B + offs[:, None] * BLOCK + offs[None, :])
    tl.store(C + offs[:, None] * BLOCK + offs[None, :], tl.dot(a, b))


def _verdict(name, launch, target="sm_90"):
    try:
        stats = aot.inspect_launch(launch, target).as_dict()
    except Exception as exc:
        return {"kernel": name, "error": f"{type(exc).__name__}: {exc}", "failures": ["does not compile"]}
    variant = gate.Variant("topk", target, "bf16", 64, (), launch.config, True)
    return {"kernel": name, "error": None, "failures": gate.check(variant, stats), "stats": stats}


def main():
    cfg = config.BlockConfig(block_rows=256, block_items=256, num_warps=8, num_stages=1)
    x = torch.empty(256)
    square = torch.empty(256, 256)
    launches = {
        "reads_module_global": config.Launch(_reads_module_global, (1,), (x, x), {"BLOCK": 256}, cfg),
        "oversized_dot": config.Launch(_oversized_dot, (1,), (square, square, square), {"BLOCK": 256}, cfg),
    }
    for name, launch in launches.items():
        print(json.dumps(_verdict(name, launch)))


if __name__ == "__main__":
    main()
