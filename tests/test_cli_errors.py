"""Command-line user errors: one ``error:`` line naming the argument, exit 2, no traceback."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tfllmer_fast.app import cli
from tfllmer_fast.app.synthetic import planted_dataset


@pytest.fixture
def data_file(tmp_path):
    data, _ = planted_dataset(num_users=40, num_items=30, clusters=3, max_len=8, seed=4)
    path = tmp_path / "d.txt"
    path.write_text("\n".join(f"{u + 1} " + " ".join(map(str, s)) for u, s in enumerate(data.sequences)))
    return path


def _one_error_line(capsys, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for needle in needles:
        assert needle in err[0], err[0]
    return err[0]


def _exit_code(argv) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exc:  # argparse's own errors
        return exc.code


def test_missing_data_file(tmp_path, capsys):
    assert _exit_code(["train", "--data", str(tmp_path / "nope.txt")]) == 2
    _one_error_line(capsys, "--data", "nope.txt")


def test_malformed_line_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2 3\n2 x 4\n")
    assert _exit_code(["train", "--data", str(bad), "--epochs", "1"]) == 2
    _one_error_line(capsys, f"{bad}:2")


def test_out_of_range_option_is_rejected_before_loading(tmp_path, capsys):
    # The data file does not exist: the option check comes first.
    assert _exit_code(["train", "--data", str(tmp_path / "nope.txt"), "--beta", "0.9"]) == 2
    _one_error_line(capsys, "--beta", "[0.0, 0.5]", "0.9")
    assert _exit_code(["train", "--data", "x", "--epochs", "0"]) == 2
    _one_error_line(capsys, "--epochs", ">= 1")


def test_features_with_the_wrong_number_of_rows(data_file, tmp_path, capsys):
    features = tmp_path / "f.npy"
    np.save(features, np.ones((5, 8), dtype=np.float32))
    argv = ["train", "--data", str(data_file), "--init", "pca", "--features", str(features), "--out", str(tmp_path)]
    assert _exit_code(argv) == 2
    _one_error_line(capsys, str(features), "rows")


def test_resume_with_different_settings(data_file, tmp_path, capsys):
    base = ["train", "--data", str(data_file), "--epochs", "1", "--batch-size", "16", "--device", "cpu",
            "--out", str(tmp_path / "run")]
    assert cli.main(base) == 0
    capsys.readouterr()
    assert _exit_code(base + ["--resume", "--lr", "0.01"]) == 2
    _one_error_line(capsys, "--resume", "train.lr: 0.001 -> 0.01")
    assert cli.main(base + ["--resume", "--epochs", "2"]) == 0  # more epochs is a continuation


def test_debug_switch_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("TFLLMER_FAST_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        cli.main(["train", "--data", str(tmp_path / "nope.txt")])


def test_help_shows_defaults_and_ranges(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for text in ("--beta BETA Rec-PCA graph filter strength (in [0.0, 0.5]) (default: 0.3)",
                 "(default: 100)", "(default: sasrec)", "(>= 1)"):
        assert text in out, text


def test_console_entry_prints_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tfllmer_fast.app.cli", "train", "--data", str(tmp_path / "nope.txt")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
