"""Nothing lost on a crash: a training run killed at random moments and
resumed each time ends with the uninterrupted run's metrics; a kill inside the
checkpoint write leaves the last complete checkpoint; a damaged checkpoint is
one ``error:`` line naming the file; a torn last line of ``epochs.jsonl`` is
dropped (with a warning) by ``plot`` and on resume."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from tfllmer_fast.app import files
from tfllmer_fast.app.data import leave_one_out
from tfllmer_fast.app.plots import load_run
from tfllmer_fast.app.synthetic import planted_dataset
from tfllmer_fast.app.config import TrainConfig
from tfllmer_fast.app.train import Trainer

TRAIN_ARGS = ["--epochs", "6", "--patience", "6", "--batch-size", "32", "--diagnostics-sample", "16",
              "--diagnostics-m", "4", "--seed", "3"]
KILLS = 5


def _write_data(path, users=120, items=80, seed=0):
    """An S3-Rec style file: ``user item item ...`` per line, in time order."""
    rng = np.random.default_rng(seed)
    lines = []
    for user in range(1, users + 1):
        start = rng.integers(1, items + 1)
        seq = (start + np.arange(rng.integers(5, 12)) * rng.integers(1, 4)) % items + 1
        lines.append(" ".join(str(x) for x in (user, *seq)))
    path.write_text("\n".join(lines) + "\n")


def _train(data, out, *, resume=False, check=True):
    cmd = [sys.executable, "-m", "tfllmer_fast.app.cli", "train", "--data", str(data), "--out", str(out), *TRAIN_ARGS]
    return subprocess.run(cmd + (["--resume"] if resume else []), capture_output=True, text=True, check=check,
                          env=_env())


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _test_metrics(out):
    return json.loads((out / "metrics.json").read_text())["test"]


def test_killed_at_random_moments_resumes_to_the_uninterrupted_result(tmp_path):
    data = tmp_path / "data.txt"
    _write_data(data)
    tic = time.perf_counter()
    _train(data, tmp_path / "whole")
    whole_seconds = time.perf_counter() - tic

    out = tmp_path / "killed"
    rng = random.Random(0)
    kills = 0
    for _ in range(KILLS):
        cmd = [sys.executable, "-m", "tfllmer_fast.app.cli", "train", "--data", str(data), "--out", str(out),
               *TRAIN_ARGS] + (["--resume"] if (out / "checkpoint.pt").exists() else [])
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
        try:
            # Startup (imports) takes part of the run; the rest is epochs, each
            # ending in a checkpoint write, where these kills mostly land.
            proc.wait(timeout=rng.uniform(0.2, 0.75) * whole_seconds)
        except subprocess.TimeoutExpired:
            proc.kill()  # SIGKILL: no handler runs, whatever the process was doing
            proc.wait()
            kills += 1
            continue
        assert proc.returncode == 0
        break
    _train(data, out, resume=(out / "checkpoint.pt").exists() and not (out / "metrics.json").exists())
    assert kills >= 1
    assert _test_metrics(out) == _test_metrics(tmp_path / "whole")
    epochs = [row["epoch"] for row in files.read_json_lines(out / "epochs.jsonl")]
    assert epochs == list(range(len(epochs)))  # one row per epoch, none repeated after a resume


class _Killed(BaseException):
    pass


def _small_trainer(out_dir, epochs):
    data, _ = planted_dataset(num_users=60, num_items=50, clusters=10, max_len=8, seed=0)
    config = TrainConfig(dim=16, max_len=8, batch_size=32, epochs=epochs, patience=epochs, diagnostics_sample=0)
    return Trainer(leave_one_out(data), config, out_dir=out_dir)


def test_a_kill_inside_the_checkpoint_write_leaves_the_last_complete_checkpoint(tmp_path, monkeypatch):
    _small_trainer(tmp_path, 1).fit()
    before = (tmp_path / "checkpoint.pt").read_bytes()

    def killed_while_writing(fd):
        raise _Killed  # the new checkpoint is half on disk, not yet renamed over the old one

    trainer = _small_trainer(tmp_path, 2)
    trainer.load_checkpoint(tmp_path / "checkpoint.pt")
    monkeypatch.setattr(files.os, "fsync", killed_while_writing)
    with pytest.raises(_Killed):
        trainer.fit()
    monkeypatch.undo()
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    resumed = _small_trainer(tmp_path, 2)
    resumed.load_checkpoint(tmp_path / "checkpoint.pt")
    assert resumed.epoch == 1


def test_checkpoints_load_with_weights_only(tmp_path):
    _small_trainer(tmp_path, 1).fit()
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1
    torch.load(tmp_path / "best_model.pt", weights_only=True)


@pytest.mark.parametrize("damage", ["torn", "garbage"])
def test_a_damaged_checkpoint_is_one_error_line_naming_the_file(tmp_path, damage):
    data = tmp_path / "data.txt"
    _write_data(data, users=40)
    out = tmp_path / "run"
    _train(data, out)
    ckpt = out / "checkpoint.pt"
    content = ckpt.read_bytes()
    ckpt.write_bytes(content[: len(content) // 2] if damage == "torn" else b"not a checkpoint\n" * 10)
    proc = _train(data, out, resume=True, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode != 0 and len(errors) == 1, proc.stderr
    assert str(ckpt) in errors[0] and "new --out" in errors[0]
    assert "Traceback" not in proc.stderr


def test_a_torn_last_log_line_is_dropped_by_plot_and_on_resume(tmp_path):
    _small_trainer(tmp_path, 1).fit()
    log = tmp_path / "epochs.jsonl"
    rows = files.read_json_lines(log)
    with open(log, "a") as f:
        f.write('{"epoch": 2, "loss": 1.2')  # a crash mid-append
    with pytest.warns(UserWarning, match="torn last line"):
        run = load_run(tmp_path)
    assert run.series["loss"][0] == [row["epoch"] for row in rows if "loss" in row]
    resumed = _small_trainer(tmp_path, 2)
    resumed.load_checkpoint(tmp_path / "checkpoint.pt")
    assert files.read_json_lines(log) == rows  # rewritten from the checkpoint
    resumed.fit()
    assert [row["epoch"] for row in files.read_json_lines(log)] == [1, 2]
