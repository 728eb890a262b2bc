"""Training loop: early stopping, metrics file, exact resume, CLI end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tfllmer_fast.app import cli
from tfllmer_fast.app.config import ItemInitConfig, RunConfig
from tfllmer_fast.app.data import leave_one_out
from tfllmer_fast.app.pipeline import item_embeddings, run
from tfllmer_fast.app.synthetic import planted_dataset
from tfllmer_fast.app.config import TrainConfig
from tfllmer_fast.app.train import Trainer


@pytest.fixture(scope="module")
def small():
    return planted_dataset(num_users=150, num_items=60, clusters=6, feature_dim=32, max_len=12, seed=1)


def _config(**kw):
    base = dict(dim=16, max_len=10, batch_size=32, epochs=2, patience=5, eval_batch_size=64,
                model_options={"dropout": 0.1})
    base.update(kw)
    return TrainConfig(**base)


def test_fit_writes_metrics(small, tmp_path):
    data, _ = small
    result = Trainer(leave_one_out(data), _config(), out_dir=tmp_path).fit()
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["test"]["HR@10"] == result["test"]["HR@10"]
    assert set(saved) >= {"valid", "test", "config", "split"} and saved["test"]["exclude_history"] is True
    rows = [json.loads(line) for line in (tmp_path / "epochs.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2] and "NDCG@10" in rows[1]["valid"]
    # Row 0 is the initial table; every row has the diagnostics.
    assert "valid" not in rows[0] and sum(rows[0]["diagnostics"]["norm_histogram"]["counts"]) == 60
    for row in rows:
        d = row["diagnostics"]
        assert d["norm_disparity"] >= 1 and d["kappa_median"] >= 1 and 0 <= d["coherence_mean"] <= 1
        assert d["queries"] > 0 and d["seconds"] >= 0


def test_resume_is_exact(small, tmp_path):
    data, _ = small
    split = leave_one_out(data)
    full = Trainer(split, _config(epochs=3, patience=10))
    full.fit()
    first = Trainer(split, _config(epochs=1, patience=10), out_dir=tmp_path)
    first.fit()
    resumed = Trainer(split, _config(epochs=3, patience=10), out_dir=tmp_path)
    resumed.load_checkpoint(tmp_path / "checkpoint.pt")
    result = resumed.fit()
    assert len(resumed.history) == 3  # the resumed run's cost includes the epoch run before the resume
    assert result["train_seconds"] == pytest.approx(sum(r["train_s"] + r["valid_s"] for r in resumed.history))
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("init", ["pca", "recpca"])
def test_feature_initializations(small, init):
    data, features = small
    emb = item_embeddings(init, leave_one_out(data), features, 16)
    assert emb.shape == (61, 16) and (emb[0] == 0).all() and np.isfinite(emb).all()


@pytest.mark.parametrize("init", ["pca", "recpca"])
def test_features_narrower_than_the_table_fill_the_first_columns(small, init):
    """19 genres for a 64-wide table: every component, the other columns zero."""
    data, features = small
    narrow = features[:, :5]
    emb = item_embeddings(init, leave_one_out(data), narrow, 16)
    assert emb.shape == (61, 16) and not emb[:, 5:].any()
    np.testing.assert_array_equal(emb[:, :5], item_embeddings(init, leave_one_out(data), narrow, 5))


def test_rec_pca_init_beats_random_on_planted_data(small):
    data, features = small
    scores = {}
    for init in ("random", "recpca"):
        config = RunConfig(items=ItemInitConfig(init=init), train=_config(epochs=3))
        result = run(config, data=data, features=features)
        scores[init] = result["test"]["NDCG@10"]
    assert scores["recpca"] > scores["random"]


def test_cli_train_end_to_end(tmp_path):
    data_file = tmp_path / "tiny.txt"
    data, _ = planted_dataset(num_users=80, num_items=40, clusters=4, max_len=10, seed=2)
    data_file.write_text("\n".join(f"{u + 1} " + " ".join(map(str, s)) for u, s in enumerate(data.sequences)))
    out = tmp_path / "run"
    assert cli.main(["train", "--data", str(data_file), "--model", "gru4rec", "--epochs", "2", "--device", "cpu",
                     "--out", str(out), "--batch-size", "16"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["test"]["NDCG@10"] <= 1 and metrics["config"]["train"]["model"] == "gru4rec"
    saved = RunConfig.from_dict(json.loads((out / "config.json").read_text()))
    assert saved.data.path == str(data_file) and saved.items.beta == 0.3 and saved.train.batch_size == 16
    assert metrics["dataset"]["users"] == 80 and metrics["dataset"]["path"] == str(data_file)


def test_unknown_init_is_an_error(small):
    with pytest.raises(ValueError, match="init must be one of"):
        item_embeddings("svd", leave_one_out(small[0]), small[1], 16)
    with pytest.raises(ValueError, match="needs item features"):
        item_embeddings("pca", leave_one_out(small[0]), None, 16)


def test_interrupt_tests_the_best_model_so_far(small, tmp_path, monkeypatch):
    data, _ = small
    trainer = Trainer(leave_one_out(data), _config(epochs=5, patience=10), out_dir=tmp_path)
    finished_epoch = trainer.train_epoch

    def stop_in_second_epoch():
        if trainer.epoch == 1:
            raise KeyboardInterrupt
        return finished_epoch()

    monkeypatch.setattr(trainer, "train_epoch", stop_in_second_epoch)
    result = trainer.fit()
    assert result["interrupted"] is True and result["epochs_run"] == result["best_epoch"] == 1
    assert json.loads((tmp_path / "metrics.json").read_text())["test"]["NDCG@10"] == result["test"]["NDCG@10"]


def test_interrupt_before_any_epoch_propagates(small, monkeypatch):
    data, _ = small
    trainer = Trainer(leave_one_out(data), _config())

    def stop():
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train_epoch", stop)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()


def test_run_config_validation_names_the_setting():
    config = RunConfig(items=ItemInitConfig(beta=0.9))
    with pytest.raises(ValueError, match="beta must be in"):
        config.validate()
    with pytest.raises(ValueError, match="patience must be >= 1"):
        TrainConfig(patience=0).validate()


def test_train_step_is_the_trainers_step(small):
    """The trainer, the profiler and the benchmark share TrainStep: one step of
    it equals the plain sequence of calls."""
    from tfllmer_fast.app.models import build_model
    from tfllmer_fast.app.train import TrainStep

    data, _ = small
    seqs = [s for s in leave_one_out(data).train if len(s) >= 2][:16]
    models, losses = [], []
    for use_step in (True, False):
        torch.manual_seed(0)
        model = build_model("sasrec", data.num_items, dim=16, max_len=10, dropout=0.0)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        inputs, targets = model.make_batch(seqs, np.random.default_rng(0))
        if use_step:
            loss = TrainStep(model, opt, "cpu")(inputs, targets)
        else:
            loss = model.head_loss(model.encode(inputs), targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
        models.append(model)
        losses.append(loss.item())
    assert losses[0] == losses[1]
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(a, b)


def test_item_table_steps_at_its_own_learning_rate(small):
    """Adam's first step moves each coordinate by its group's rate (the sign of
    the gradient times the rate): the table by item_lr, the backbone by lr."""
    from tfllmer_fast.app.models import build_model
    from tfllmer_fast.app.train import make_optimizer

    data, _ = small
    seqs = [s for s in leave_one_out(data).train if len(s) >= 2][:16]
    torch.manual_seed(0)
    model = build_model("sasrec", data.num_items, dim=16, max_len=10, dropout=0.0)
    opt = make_optimizer(model, TrainConfig(lr=1e-3, item_lr=5e-3))
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    inputs, targets = model.make_batch(seqs, np.random.default_rng(0))
    opt.zero_grad()
    model.loss(inputs, targets).backward()
    opt.step()
    moved = {name: (p.detach() - before[name]).abs().max().item() for name, p in model.named_parameters()}
    assert moved.pop("head.weight") == pytest.approx(5e-3, rel=1e-3)
    assert max(moved.values()) == pytest.approx(1e-3, rel=1e-3)

    model.item_table.requires_grad_(False)  # --freeze-items: the table is not optimized at all
    frozen = make_optimizer(model, TrainConfig(lr=1e-3, item_lr=5e-3))
    assert all(p is not model.item_table for g in frozen.param_groups for p in g["params"])


def test_table_rate_defaults_to_a_multiple_for_random_tables_only(small):
    from tfllmer_fast.app.config import RANDOM_TABLE_LR_SCALE

    data, features = small
    sp = leave_one_out(data)
    config = TrainConfig(dim=16, max_len=10, lr=2e-3, diagnostics_sample=0)
    init = item_embeddings("pca", sp, features, 16)
    for item_init, expected in ((None, RANDOM_TABLE_LR_SCALE * 2e-3), (init, 2e-3)):
        trainer = Trainer(sp, config, item_init=item_init)
        table = trainer.model.item_table
        table_group = [g for g in trainer.optimizer.param_groups if any(p is table for p in g["params"])]
        assert [g["lr"] for g in table_group] == [pytest.approx(expected)]
    assert TrainConfig(item_lr=5e-4).table_lr(from_features=False) == 5e-4  # an explicit rate wins
    with pytest.raises(ValueError, match="item_lr must be >= 0"):
        TrainConfig(item_lr=-1.0).validate()


def test_resuming_a_checkpoint_with_one_optimizer_group_is_a_named_error(small, tmp_path):
    """Checkpoints written before the item table had its own rate hold one Adam group."""
    data, _ = small
    split = leave_one_out(data)
    Trainer(split, _config(epochs=1), out_dir=tmp_path).fit()
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    groups = state["optimizer"]["param_groups"]
    groups[0]["params"] += groups.pop()["params"]
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="1 parameter group"):
        Trainer(split, _config(epochs=2), out_dir=tmp_path).load_checkpoint(tmp_path / "checkpoint.pt")


def test_evaluation_ranks_in_the_compute_dtype_under_autocast(monkeypatch):
    """With autocast on (bf16 on CUDA by default; asked for on the CPU here)
    evaluation ranks in the autocast dtype, the model's queries and table as
    they are, not both upcast to fp32 first (3-pass TF32 on a GPU, or the
    torch path; before, the queries were upcast outside autocast)."""
    from tfllmer_fast.app import train as train_module
    from tfllmer_fast.app.data import EvalSet
    from tfllmer_fast.app.models import build_model
    from tfllmer_fast.ops import ranking

    seen = []
    original = ranking._checks.compute_dtype

    def spy(hidden, item_emb):
        seen.append(original(hidden, item_emb))
        return seen[-1]

    monkeypatch.setattr(ranking._checks, "compute_dtype", spy)
    model = build_model("sasrec", 30, dim=16, max_len=8)
    rng = np.random.default_rng(0)
    eval_set = EvalSet([rng.integers(1, 31, size=5) for _ in range(6)], rng.integers(1, 31, size=6))
    for amp, expected in ((True, torch.bfloat16), (False, torch.float32)):
        seen.clear()
        evaluator = train_module._Evaluator(eval_set, train_module.TrainConfig(device="cpu", amp=amp),
                                            np.arange(31) < 15)
        evaluator(model)
        assert seen and set(seen) == {expected}, (amp, seen)
