"""``tfllmer-fast plot`` and ``tfllmer-fast ablate`` on tiny data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tfllmer_fast.app import ablation, cli
from tfllmer_fast.app.plots import load_run
from tfllmer_fast.app.synthetic import planted_dataset


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    data, features = planted_dataset(num_users=60, num_items=80, clusters=4, feature_dim=72, max_len=10, seed=6)
    (root / "d.txt").write_text("\n".join(f"{u + 1} " + " ".join(map(str, s)) for u, s in enumerate(data.sequences)))
    np.save(root / "f.npy", features)
    return root / "d.txt", root / "f.npy"


COMMON = ["--epochs", "2", "--batch-size", "16", "--device", "cpu", "--diagnostics-sample", "20", "--diagnostics-m",
          "4"]


def _not_json(name):
    raise AssertionError(f"epochs.jsonl holds {name}, which strict JSON readers reject")


def test_plot_reads_the_runs_and_renders(files, tmp_path):
    data, features = files
    runs = []
    for init in ("random", "recpca"):
        out = tmp_path / init
        args = ["train", "--data", str(data), "--features", str(features), "--init", init, "--out", str(out)]
        assert cli.main(args + COMMON) == 0
        runs.append(out)
    run = load_run(runs[1])
    rows = [json.loads(line, parse_constant=_not_json) for line in (runs[1] / "epochs.jsonl").read_text().splitlines()]
    assert run.series["loss"] == ([1, 2], [rows[1]["loss"], rows[2]["loss"]])
    assert run.series["kappa_median"][0] == [0, 1, 2]  # epoch 0: the initial table
    assert run.series["NDCG@10"][1] == [rows[1]["valid"]["NDCG@10"], rows[2]["valid"]["NDCG@10"]]
    assert sum(run.norm_histogram["counts"]) == 80
    png = tmp_path / "p.png"
    assert cli.main(["plot", *map(str, runs), "--out", str(png), "--labels", "random", "recpca"]) == 0
    assert png.stat().st_size > 10_000


def test_plot_of_a_directory_without_a_run_is_one_error_line(tmp_path, capsys):
    assert cli.main(["plot", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_ablate_runs_each_variant_and_seed_once(files, tmp_path, monkeypatch):
    data, features = files
    out = tmp_path / "abl"
    args = ["ablate", "--data", str(data), "--features", str(features), "--seeds", "1", "2", "--out", str(out)]
    assert cli.main(args + COMMON) == 0
    table = (out / "ablation.md").read_text()
    for name in ablation.VARIANTS:
        assert f"| {name} | 2 |" in table
    assert (out / "ablation.png").stat().st_size > 0
    config = json.loads((out / "recpca-no-norm" / "seed2" / "config.json").read_text())
    assert config["items"]["init"] == "recpca" and config["train"]["normalize"] is False
    assert config["train"]["seed"] == 2

    def must_not_run(*a, **k):
        raise AssertionError("a finished run was redone")

    monkeypatch.setattr("tfllmer_fast.app.pipeline.run", must_not_run)
    assert cli.main(args + COMMON) == 0  # everything finished: only the table is rewritten
