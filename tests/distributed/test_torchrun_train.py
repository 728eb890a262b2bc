"""``torchrun --nproc-per-node 2 -m tfllmer_fast.app.cli train``: the sharded job on CPU (gloo)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from tfllmer_fast.app import cli
from tfllmer_fast.app.synthetic import planted_dataset


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args, procs=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={procs}",
           f"--master-port={_free_port()}", "-m", "tfllmer_fast.app.cli", "train", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    data, _ = planted_dataset(num_users=120, num_items=80, clusters=8, max_len=12, seed=5)
    path = tmp_path_factory.mktemp("data") / "tiny.txt"
    path.write_text("\n".join(f"{u + 1} " + " ".join(map(str, s)) for u, s in enumerate(data.sequences)))
    return path


def test_two_processes_train_like_one_and_resume(data_file, tmp_path):
    """Without dropout (its random streams differ per rank) two processes at
    half the batch each take the one-process steps: same metrics. The sharded
    run resumes from its per-rank checkpoints."""
    common = ["--data", str(data_file), "--model", "sasrec", "--dropout", "0", "--batch-size", "32", "--seed", "3",
              "--device", "cpu"]
    single = tmp_path / "single"
    assert cli.main(["train", *common, "--epochs", "3", "--out", str(single)]) == 0
    sharded = tmp_path / "sharded"
    _torchrun(common + ["--epochs", "2", "--out", str(sharded)])
    assert sorted(p.name for p in sharded.glob("checkpoint*")) == ["checkpoint.rank0-of-2.pt",
                                                                   "checkpoint.rank1-of-2.pt"]
    _torchrun(common + ["--epochs", "3", "--out", str(sharded), "--resume"])
    one = json.loads((single / "metrics.json").read_text())
    two = json.loads((sharded / "metrics.json").read_text())
    assert len((sharded / "epochs.jsonl").read_text().splitlines()) == 3
    for split in ("valid", "test"):
        for metric in ("NDCG@10", "HR@10"):
            assert abs(one[split][metric] - two[split][metric]) <= 1e-6, (split, metric, one[split], two[split])
