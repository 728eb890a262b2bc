"""bench-report and profile commands."""

from __future__ import annotations

import json

import numpy as np

from tfllmer_fast.app import cli
from tfllmer_fast.app.bench_report import report
from tfllmer_fast.app.synthetic import planted_dataset


def test_bench_report_ratios(tmp_path):
    payload = {"benchmarks": [
        {"group": "head", "name": "a", "stats": {"median": 0.010}, "extra_info": {"impl": "plain_torch", "device": "X"}},
        {"group": "head", "name": "b", "stats": {"median": 0.002}, "extra_info": {"impl": "fused", "device": "X",
                                                                                  "TFLOP/s": 100}},
    ]}
    path = tmp_path / "b.json"
    path.write_text(json.dumps(payload))
    text = report(path)
    assert "| fused | 2.00 | 1x | 100 |" in text
    assert "| plain_torch | 10.00 | 5x |  |" in text and "device: X" in text


def test_profile_command(tmp_path, capsys):
    data, _ = planted_dataset(num_users=60, num_items=30, clusters=3, max_len=8, seed=3)
    path = tmp_path / "d.txt"
    path.write_text("\n".join(f"{u + 1} " + " ".join(map(str, s)) for u, s in enumerate(data.sequences)))
    trace = tmp_path / "trace.json"
    assert cli.main(["profile", "--data", str(path), "--steps", "2", "--batch-size", "8", "--device", "cpu",
                     "--trace", str(trace)]) == 0
    out = capsys.readouterr().out
    for phase in ("data", "backbone forward", "head forward", "backward", "optimizer"):
        assert phase in out
    assert trace.exists() and json.loads(trace.read_text())
    assert np.isfinite(float(out.split("ms/step")[0].split(",")[-1]))


def test_demo_reading_follows_the_numbers():
    from tfllmer_fast.app.demo import format_training_demo

    def row(init, ndcg, best):
        return {"init": init, "HR@10": 0.5, "NDCG@10": ndcg, "best_epoch": best, "epochs_run": best + 3,
                "seconds": 1.0, "users": 600, "items": 4000}

    won = format_training_demo([row("random", 0.42, 8), row("recpca", 0.45, 13)]).splitlines()[-1]
    assert "0.450 vs 0.420 (best epochs 13 and 8)" in won and "features carry" in won
    lost = format_training_demo([row("random", 0.45, 8), row("recpca", 0.42, 13)]).splitlines()[-1]
    assert "did not help" in lost
