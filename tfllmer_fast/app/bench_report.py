"""Turn a pytest-benchmark JSON file into markdown tables, one per group, with
each baseline's time as a ratio to the fused row measured in the same run."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

FUSED_NAMES = ("fused", "triton", "cpp", "cupy")
LABEL_KEYS = ("impl", "head", "backend")
EXTRA_COLUMNS = ("TFLOP/s", "peak_extra_GiB", "epoch_s_sports", "rel_err_dE")


def _label(bench: dict) -> str:
    info = bench.get("extra_info", {})
    for key in LABEL_KEYS:
        if key in info:
            return str(info[key])
    return bench.get("name", "?")


def report(path) -> str:
    data = json.loads(Path(path).read_text())
    groups = defaultdict(list)
    for bench in data.get("benchmarks", []):
        groups[bench.get("group") or bench.get("fullname", "")].append(bench)
    if not groups:
        raise ValueError(f"{path} holds no benchmarks")
    lines = []
    for group, rows in groups.items():
        rows.sort(key=lambda b: b["stats"]["median"])
        fused = next((b for b in rows if _label(b) in FUSED_NAMES), rows[0])
        base = fused["stats"]["median"]
        devices = sorted({str(b.get("extra_info", {}).get("device", "?")) for b in rows})
        extras = [c for c in EXTRA_COLUMNS if any(c in b.get("extra_info", {}) for b in rows)]
        lines += [f"### {group}", "", f"device: {', '.join(devices)}", ""]
        header = ["impl", "median ms", f"time / {_label(fused)}", *extras]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for b in rows:
            cells = [_label(b), f"{b['stats']['median'] * 1e3:.2f}", f"{b['stats']['median'] / base:.3g}x"]
            cells += [str(b.get("extra_info", {}).get(c, "")) for c in extras]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
