"""The lent-GPU script's CPU dry run (every step, tiny shapes, the kernels under
the interpreter), so the one call a GPU session makes cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_measures_every_step_and_prints_one_table(tmp_path):
    out = tmp_path / "gpu-results"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_validate", "--dry-run", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert list(results) == ["smoke", "head", "ranking", "train", "tests"]
    for step, record in results.items():
        assert record["status"] == "done", (step, record["status"])
        assert record["rows"], step
    timed = [r for step in ("head", "ranking", "train") for r in results[step]["rows"]]
    assert all(r.get("ms", 0) > 0 for r in timed), timed
    assert {r["impl"] for r in results["head"]["rows"]} >= {"fused", "plain_torch"}
    assert " passed" in results["smoke"]["rows"][0]["note"] and "failed" not in results["smoke"]["rows"][0]["note"]
    table = proc.stdout
    assert table.startswith("GPU validation on") and table.count("| head |") >= 3
    assert (out / "results.md").read_text() == table.rstrip("\n") + "\n"
