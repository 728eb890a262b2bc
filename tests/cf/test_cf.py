"""Collaborative filtering: split, LightGCN against a dense reference, losses,
ranking metrics against brute force, each loss end to end, and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from tfllmer_fast.app import cli
from tfllmer_fast.app.cf import CFConfig, LightGCN, bpr_loss, positive_only_loss, random_split, ranking_metrics, run_cf
from tfllmer_fast.app.config import DEFAULT_ALPHA, LOSSES
from tfllmer_fast.app.data import Interactions
from tfllmer_fast.app.synthetic import planted_dataset


@pytest.fixture(scope="module")
def data():
    return planted_dataset(num_users=120, num_items=60, clusters=4, max_len=12, seed=3)[0]


def test_split_is_disjoint_and_keeps_a_training_item(data):
    split = random_split(data, test=0.2, valid=0.1, seed=1)
    for seq, tr, va, te in zip(data.sequences, split.train, split.valid, split.test):
        items = np.unique(seq)
        assert len(tr) >= 1
        assert np.array_equal(np.sort(np.concatenate([tr, va, te])), items)
        assert len(te) == min(round(0.2 * len(items)), len(items) - 1)
    assert split.counts["train"] + split.counts["valid"] + split.counts["test"] == sum(len(np.unique(s)) for s in
                                                                                      data.sequences)
    assert random_split(data, seed=1).test[5].tolist() == split.test[5].tolist()  # seeded


def test_lightgcn_is_the_mean_of_normalized_adjacency_powers():
    r = sp.csr_matrix(np.array([[0, 1, 1, 0], [0, 0, 1, 1], [0, 1, 0, 0]], dtype=np.float32))  # 3 users, 3 items
    torch.manual_seed(0)
    model = LightGCN(3, 3, 5, interactions=r, layers=2)
    a = np.zeros((7, 7))
    a[:3, 3:], a[3:, :3] = r.toarray(), r.toarray().T
    deg = a.sum(1)
    inv = np.where(deg > 0, 1 / np.sqrt(np.maximum(deg, 1e-12)), 0)
    a_hat = torch.tensor(inv[:, None] * a * inv[None, :], dtype=torch.float32)
    x = torch.cat([model.users.weight, model.items.weight])
    expected = (x + a_hat @ x + a_hat @ a_hat @ x) / 3
    users, items = model.embeddings()
    assert torch.allclose(torch.cat([users, items]), expected, atol=1e-6)


def test_losses_by_hand():
    u, p, n = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.5]]), torch.tensor([[-1.0, 2.0]])
    assert bpr_loss(u, p, n).item() == pytest.approx(-math.log(1 / (1 + math.exp(-(0.5 + 1.0)))))
    assert positive_only_loss(u, p).item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.5))))
    two = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    weighted = positive_only_loss(two, torch.tensor([[2.0, 0.0], [0.0, 0.0]]), torch.tensor([3.0, 1.0]))
    assert weighted.item() == pytest.approx((3 * -F.logsigmoid(torch.tensor(2.0)) + math.log(2)).item() / 4)


def test_ranking_metrics_match_brute_force():
    torch.manual_seed(1)
    users, items = torch.randn(9, 4), torch.randn(13, 4)
    rng = np.random.default_rng(0)
    known = [np.sort(rng.choice(np.arange(1, 13), 3, replace=False)) for _ in range(9)]
    heldout = [np.sort(rng.choice(np.setdiff1d(np.arange(1, 13), k), rng.integers(0, 4), replace=False))
               for k in known]
    head = np.zeros(13, bool)
    head[1:5] = True
    out = ranking_metrics(users, items, heldout, known, ks=(3, 5), head=head)
    scores = (users @ items.T).numpy()
    expected = {"Recall@5": [], "NDCG@3": []}
    tail = []
    for u in range(9):
        if not len(heldout[u]):
            continue
        s = scores[u].copy()
        s[0] = -np.inf
        s[known[u]] = -np.inf
        top = np.argsort(-s, kind="stable")
        hits5 = np.isin(top[:5], heldout[u])
        expected["Recall@5"].append(hits5.sum() / len(heldout[u]))
        hits3 = np.isin(top[:3], heldout[u])
        ideal = sum(1 / np.log2(j + 2) for j in range(min(3, len(heldout[u]))))
        expected["NDCG@3"].append(sum(h / np.log2(j + 2) for j, h in enumerate(hits3)) / ideal)
        t = heldout[u][~head[heldout[u]]]
        if len(t):
            tail.append(np.isin(top[:5], t).sum() / len(t))
    assert out["users"] == len(expected["Recall@5"])
    assert out["Recall@5"] == pytest.approx(np.mean(expected["Recall@5"]))
    assert out["NDCG@3"] == pytest.approx(np.mean(expected["NDCG@3"]))
    assert out["longtail"]["tail"]["Recall@5"] == pytest.approx(np.mean(tail))
    assert out["longtail"]["tail"]["users"] == len(tail)


@pytest.mark.parametrize("model", ["mf", "lightgcn"])
@pytest.mark.parametrize("loss", LOSSES)
def test_each_loss_trains_and_reports(data, loss, model, tmp_path):
    config = CFConfig(model=model, loss=loss, epochs=3, batch_size=128, lr=1e-2, seed=0)
    result = run_cf(config, data, out_dir=tmp_path)
    assert 0.0 <= result["test"]["NDCG@10"] <= 1.0 and result["test"]["users"] > 0
    rows = [json.loads(line) for line in (tmp_path / "epochs.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    assert all(1.0 <= r["diagnostics"]["erank"] <= 64 for r in rows)
    assert np.isfinite([r["loss"] for r in rows[1:]]).all()
    assert result["alpha"] == DEFAULT_ALPHA.get(loss)


@pytest.mark.parametrize("loss", ["directspec", "directspec+"])
def test_the_balancing_step_defaults_per_loss(data, loss):
    from tfllmer_fast.app.cf import CFTrainer

    split = random_split(data, seed=0)
    alphas = {"default": None, "explicit": DEFAULT_ALPHA[loss], "other": DEFAULT_ALPHA[loss] / 4}
    tables = {}
    for name, alpha in alphas.items():
        trainer = CFTrainer(split, CFConfig(loss=loss, epochs=1, batch_size=128, alpha=alpha))
        trainer.train_epoch(0)
        tables[name] = trainer.model.item_table
    assert torch.equal(tables["default"], tables["explicit"])
    assert not torch.equal(tables["default"], tables["other"])
    assert CFConfig(loss=loss, alpha=0.25).balance_step == 0.25


def test_learning_beats_the_untrained_model(data):
    trained = run_cf(CFConfig(loss="softmax", epochs=15, batch_size=128, lr=1e-2, seed=0), data)
    untrained = run_cf(CFConfig(loss="softmax", epochs=1, batch_size=128, lr=0.0, seed=0), data)
    assert trained["test"]["NDCG@10"] > 2 * untrained["test"]["NDCG@10"]


def test_validation_every_few_epochs(data, tmp_path):
    result = run_cf(CFConfig(epochs=7, eval_every=3, patience=50, batch_size=128), data, out_dir=tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "epochs.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if "valid" in r] == [3, 6, 7]  # and always the last epoch
    assert result["best_epoch"] in (3, 6, 7) and result["epochs_run"] == 7


def test_itemwise_sam_changes_the_mf_steps(data):
    from tfllmer_fast.app.cf import CFTrainer

    split = random_split(data, seed=0)
    trainers = {sam: CFTrainer(split, CFConfig(loss="bpr", epochs=1, batch_size=128, sam=sam)) for sam in ("off",
                                                                                                          "itemwise")}
    for trainer in trainers.values():
        trainer.train_epoch(0)
    assert not torch.equal(trainers["off"].model.item_table, trainers["itemwise"].model.item_table)


def test_validation_must_fit_in_the_patience_window():
    with pytest.raises(ValueError, match=r"eval_every \(20\) must be <= patience \(10\)"):
        CFConfig(eval_every=20).validate()


@pytest.mark.parametrize("loss", ["bpr", "softmax"])
def test_a_step_given_to_a_loss_without_one_is_refused(loss):
    assert CFConfig(loss=loss).validate().balance_step is None
    with pytest.raises(ValueError, match=f"alpha is the DirectSpec step and does not apply to loss '{loss}'"):
        CFConfig(loss=loss, alpha=1.0).validate()


def test_cli_train_cf_and_its_errors(data, tmp_path, capsys):
    path = tmp_path / "d.txt"
    path.write_text("\n".join(f"{u + 1} " + " ".join(map(str, s)) for u, s in enumerate(data.sequences)))
    out = tmp_path / "run"
    assert cli.main(["train-cf", "--data", str(path), "--loss", "directspec+", "--epochs", "2", "--batch-size",
                     "128", "--device", "cpu", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["config"]["loss"] == "directspec+"
    from tfllmer_fast.app.plots import load_run

    run = load_run(out)
    assert run.series["erank"][0] == [0, 1, 2] and run.series["erank_users"][0] == [0, 1, 2]
    assert not run.series["kappa_median"][0] and run.norm_histogram is None
    assert cli.main(["plot", str(out), "--out", str(tmp_path / "cf.png")]) == 0
    assert (tmp_path / "cf.png").stat().st_size > 10_000
    capsys.readouterr()
    assert cli.main(["train-cf", "--data", str(path), "--tau-0", "5", "--tau-1", "4", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == "error: tau_0 must be <= tau_1, got 5.0 > 4.0"
    with pytest.raises(SystemExit):
        cli.main(["train-cf", "--data", str(path), "--loss", "hinge"])


def test_users_without_held_out_items_are_skipped():
    tiny = Interactions([np.array([1, 2]), np.array([3])], 3)
    split = random_split(tiny, test=0.5, valid=0.0)
    assert [len(t) for t in split.test] == [1, 0] and [len(t) for t in split.train] == [1, 1]
