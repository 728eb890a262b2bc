"""The RePlay adapter against RePlay itself, on LastFM prepared with RePlay's
own tooling (LabelEncoder, LastNSplitter leave-one-out, groupby_sequences,
ParquetModule with the default SasRec transforms): FusedCE equals RePlay's CE
in value and gradients on a real batch, the fused ranking gives RePlay's dense
metrics on the same weights, and a short run through Lightning's trainer ends
in RePlay's metrics without the model's dense head ever running."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.integrations.client import import_client

import_client("replay")
lightning = pytest.importorskip("lightning")

from replay.data import FeatureHint, FeatureSource, FeatureType  # noqa: E402
from replay.data.nn import ParquetModule, TensorFeatureInfo, TensorFeatureSource, TensorSchema  # noqa: E402
from replay.metrics import NDCG, HitRate, OfflineMetrics  # noqa: E402
from replay.nn.lightning import LightningModule  # noqa: E402
from replay.nn.lightning.callback import ComputeMetricsCallback, PandasTopItemsCallback  # noqa: E402
from replay.nn.lightning.postprocessor import SeenItemsFilter  # noqa: E402
from replay.nn.loss import CE, CESampled  # noqa: E402
from replay.nn.sequential import SasRec  # noqa: E402
from replay.nn.transform import CopyTransform, GroupTransform, RenameTransform  # noqa: E402
from replay.nn.transform.template import make_default_sasrec_transforms  # noqa: E402

from tfllmer_fast import HeadOptions  # noqa: E402
from tfllmer_fast.integrations import replay as adapter  # noqa: E402

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
MAX_LEN = 50
DIM = 64
KS = [1, 5, 10, 20]


def _trainer(tmp_path, **kwargs):
    return lightning.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, default_root_dir=tmp_path, **kwargs)


@pytest.fixture(scope="module")
def lastfm(tmp_path_factory):
    """LastFM (S3-Rec format) through RePlay's pipeline: ids encoded, the last
    item of each user held out for test and the one before for validation."""
    path = DATA / "LastFM.txt"
    if not path.exists():
        pytest.skip(f"{path} not present")
    torch.set_num_threads(2)
    splits = adapter.s3rec_leave_one_out_parquet(path, tmp_path_factory.mktemp("replay_lastfm"))
    out, num_items, test_gt = splits.dir, splits.num_items, splits.test_ground_truth
    schema = TensorSchema([TensorFeatureInfo(
        name="item_id", is_seq=True, padding_value=num_items, cardinality=num_items, embedding_dim=DIM,
        feature_type=FeatureType.CATEGORICAL, feature_hint=FeatureHint.ITEM_ID,
        feature_sources=[TensorFeatureSource(FeatureSource.INTERACTIONS, "item_id")])])
    transforms = make_default_sasrec_transforms(schema)
    evaluation = [RenameTransform({"item_id_mask": "padding_mask"}), CopyTransform({"item_id": "seen_ids"}),
                  GroupTransform({"feature_tensors": schema.names})]
    transforms["validate"], transforms["test"] = evaluation, copy.deepcopy(evaluation)
    transforms["predict"] = copy.deepcopy(evaluation)
    seq = {"item_id": {"shape": MAX_LEN, "padding": num_items}}
    held_out = {**seq, "ground_truth": {"shape": 1, "padding": -1}, "user_id": {}}
    metadata = {"train": {"item_id": {"shape": MAX_LEN + 1, "padding": num_items}}, "validate": held_out,
                "test": held_out, "predict": held_out}
    module = ParquetModule(batch_size=128, metadata=metadata, transforms=transforms,
                           train_path=str(out / "train.parquet"), validate_path=str(out / "val.parquet"),
                           test_path=str(out / "test.parquet"), predict_path=str(out / "test.parquet"))
    return {"module": module, "schema": schema, "num_items": num_items, "test_gt": test_gt, "dir": out}


def _sasrec(lastfm, seed=0):
    torch.manual_seed(seed)
    return SasRec.from_params(lastfm["schema"], embedding_dim=DIM, num_heads=2, num_blocks=1,
                              max_sequence_length=MAX_LEN, dropout=0.1)


@pytest.fixture(scope="module")
def train_batch(lastfm):
    module = lastfm["module"]
    module.setup("fit")
    batch = module.compiled_transforms["train"](next(iter(module.train_dataloader())))
    assert (~batch["target_padding_mask"]).any(), "the batch should hold padded positions"
    return batch


def _loss_and_grads(model, loss, batch):
    model.loss = loss
    loss.logits_callback = model.get_logits
    model.train()
    model.zero_grad()
    torch.manual_seed(1)  # the same dropout masks for both losses
    out = model.forward_train(batch["feature_tensors"], batch["padding_mask"], batch["positive_labels"], None,
                              batch["target_padding_mask"])
    out["loss"].backward()
    table = model.body.embedder.feature_embedders["item_id"].emb.weight
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return out["loss"].detach(), table.grad.clone(), grads


@pytest.mark.parametrize("kwargs", [{}, {"label_smoothing": 0.1}, {"reduction": "sum"}], ids=["mean", "smooth", "sum"])
def test_fused_ce_equals_replay_ce(lastfm, train_batch, kwargs):
    model = _sasrec(lastfm)
    ce = CE(ignore_index=lastfm["num_items"], **kwargs)
    want, want_table, want_grads = _loss_and_grads(model, ce, train_batch)
    got, got_table, got_grads = _loss_and_grads(model, adapter.FusedCE.from_ce(ce), train_batch)
    assert torch.allclose(got, want, rtol=1e-6, atol=0)
    assert torch.allclose(got_table, want_table, rtol=1e-5, atol=1e-5 * float(want_table.abs().max()))
    assert set(got_grads) == set(want_grads)
    for name, g in want_grads.items():
        assert torch.allclose(got_grads[name], g, rtol=1e-5, atol=1e-5 * float(g.abs().max()) + 1e-12), name


def test_fused_ce_per_position_losses_match_replay(lastfm, train_batch):
    model = _sasrec(lastfm)
    model.eval()
    hidden = model.body(train_batch["feature_tensors"], train_batch["padding_mask"])
    args = (hidden, None, train_batch["positive_labels"], None, None, train_batch["target_padding_mask"])
    ce = CE(ignore_index=lastfm["num_items"], reduction="none")
    ce.logits_callback = model.get_logits
    fused = adapter.FusedCE.from_ce(ce)
    fused.logits_callback = model.get_logits
    want, got = ce(*args), fused(*args)
    assert got.shape == want.shape
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)


def test_normalized_head_is_ce_over_unit_items(lastfm, train_batch):
    model = adapter.use_fused_ce(_sasrec(lastfm), options=HeadOptions())
    model.eval()
    hidden = model.body(train_batch["feature_tensors"], train_batch["padding_mask"])
    labels = train_batch["positive_labels"].masked_fill(~train_batch["target_padding_mask"], -100).flatten()
    items = F.normalize(adapter.item_table(model), dim=-1)
    want = F.cross_entropy(hidden.flatten(0, 1) @ items.T, labels)
    got = model.loss(hidden, None, train_batch["positive_labels"], None, None, train_batch["target_padding_mask"])
    assert torch.allclose(got, want, rtol=1e-5)


class _EpochLoss(lightning.Callback):
    def __init__(self):
        self.losses = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.losses.append(float(trainer.callback_metrics["train_loss_epoch"]))


def _forbid_dense_head(model):
    def raise_dense(*args, **kwargs):
        raise AssertionError("the dense (B, N) head ran")

    model.head.forward = raise_dense


@pytest.fixture(scope="module")
def trained(lastfm, tmp_path_factory):
    """Two epochs through Lightning's trainer with FusedCE, validated each epoch
    with the fused metrics callback; the model's dense head raises if called."""
    model = adapter.use_fused_ce(_sasrec(lastfm, seed=3))
    _forbid_dense_head(model)
    n = lastfm["num_items"]
    metrics = adapter.FusedComputeMetricsCallback(metrics=["ndcg", "recall"], ks=KS, item_count=n,
                                                  postprocessors=[SeenItemsFilter(n, "seen_ids")], verbose=False)
    losses = _EpochLoss()
    trainer = _trainer(tmp_path_factory.mktemp("fit"), max_epochs=2, callbacks=[metrics, losses])
    trainer.fit(adapter.FusedLightningModule(model), datamodule=lastfm["module"])
    test = _trainer(tmp_path_factory.mktemp("test"), callbacks=[metrics]).test(
        adapter.FusedLightningModule(model), datamodule=lastfm["module"], verbose=False)
    del model.head.forward  # the dense reference runs next, on these weights
    return {"model": model, "metrics": metrics, "losses": losses.losses, "test": test[0]}


def test_training_run_through_replay_trainer(trained):
    assert len(trained["losses"]) == 2 and trained["losses"][1] < trained["losses"][0]
    history = trained["metrics"].get_metrics("validate")
    assert sorted(history) == [0, 1]
    for epoch in history.values():
        assert set(epoch) == {f"{m}@{k}" for m in ("ndcg", "recall") for k in KS}
        assert all(math.isfinite(v) and 0 <= v <= 1 for v in epoch.values())
    assert history[1]["ndcg@10"] > 0
    assert all(math.isfinite(v) for v in trained["test"].values())


def test_fused_metrics_equal_replay_dense_metrics(lastfm, trained, tmp_path):
    model, n = trained["model"], lastfm["num_items"]
    results = {}
    for name, module, callback in [
        ("dense", LightningModule(model), ComputeMetricsCallback),
        ("fused", adapter.FusedLightningModule(model), adapter.FusedComputeMetricsCallback),
    ]:
        cb = callback(metrics=["ndcg", "recall", "map", "mrr"], ks=KS, item_count=n,
                      postprocessors=[SeenItemsFilter(n, "seen_ids")], verbose=False)
        results[name] = _trainer(tmp_path, callbacks=[cb]).validate(module, datamodule=lastfm["module"],
                                                                    verbose=False)[0]
    assert results["dense"].keys() == results["fused"].keys()
    for key, want in results["dense"].items():
        assert results["fused"][key] == pytest.approx(want, rel=1e-6, abs=1e-9), key


def test_fused_predictions_give_replay_offline_metrics(lastfm, trained, tmp_path):
    model, n, k = trained["model"], lastfm["num_items"], 10
    frames = {}
    for name, module, callback in [
        ("dense", LightningModule(model), PandasTopItemsCallback),
        ("fused", adapter.FusedLightningModule(model), adapter.FusedPandasTopItemsCallback),
    ]:
        cb = callback(top_k=k + 1, query_column="user_id", item_column="item_id", rating_column="score",
                      postprocessors=[SeenItemsFilter(n, "seen_ids")])
        _trainer(tmp_path, callbacks=[cb], inference_mode=True).predict(module, datamodule=lastfm["module"],
                                                                        return_predictions=False)
        frame = cb.get_result()
        frame["item_id"], frame["score"] = frame["item_id"].astype("int64"), frame["score"].astype("float64")
        frames[name] = frame
    dense, fused = (frames[n_].groupby("user_id") for n_ in ("dense", "fused"))
    for (user, d), (_, f) in zip(dense, fused):
        assert d["score"].to_numpy() == pytest.approx(f["score"].to_numpy(), rel=1e-5, abs=1e-5), user
        scores = d["score"].to_numpy()
        if scores[k - 1] - scores[k] > 1e-4:  # a clear cut: the top-k sets agree
            assert set(d["item_id"][:k]) == set(f["item_id"][:k]), user
    gt = lastfm["test_gt"][["user_id", "item_id"]]
    metrics = OfflineMetrics([NDCG(k), HitRate(k)], query_column="user_id", item_column="item_id",
                             rating_column="score")
    want, got = (metrics(frames[name].groupby("user_id").head(k), gt) for name in ("dense", "fused"))
    assert got == pytest.approx(want, rel=1e-6)
    assert want["HitRate@10"] > 0


@pytest.mark.parametrize("options", [HeadOptions(normalize_items=False), HeadOptions()], ids=["plain", "tfllmer"])
def test_fused_top_k_is_dense_topk_with_seen_masked(lastfm, options):
    n = lastfm["num_items"]
    gen = torch.Generator().manual_seed(0)
    hidden, items = torch.randn(33, DIM, generator=gen), torch.randn(n, DIM, generator=gen)
    seen = torch.randint(0, n + 1, (33, MAX_LEN), generator=gen)  # n is RePlay's padding value
    top = adapter.fused_top_k(hidden, items, 20, options=options, seen_ids=seen)
    unit = F.normalize(items, dim=-1) if options.normalize_items else items
    dense = SeenItemsFilter(n, "seen_ids").on_validation({"seen_ids": seen}, hidden @ unit.T)
    want = torch.topk(dense, 20)
    assert torch.allclose(top.values, want.values, rtol=1e-5, atol=1e-5)
    assert torch.equal(top.indices, want.indices)


def test_bad_input_names_the_argument(lastfm, train_batch):
    n = lastfm["num_items"]
    with pytest.raises(ValueError, match="reduction"):
        adapter.FusedCE(reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        adapter.FusedCE(label_smoothing=2.0)
    with pytest.raises(TypeError, match="options must be a HeadOptions"):
        adapter.FusedCE({"normalize_items": False})
    with pytest.raises(ValueError, match="temperature"):
        adapter.FusedCE(HeadOptions(temperature=0.0))
    with pytest.raises(TypeError, match="item_weights"):
        adapter.FusedCE(item_weights=torch.zeros(3, 4))
    with pytest.raises(ValueError, match="class weights"):
        adapter.FusedCE.from_ce(CE(weight=torch.ones(n)))
    with pytest.raises(TypeError, match="ce must be a replay.nn.loss.CE, got CESampled"):
        adapter.FusedCE.from_ce(CESampled())
    with pytest.raises(TypeError, match="model must be"):
        adapter.FusedLightningModule(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="postprocessors"):
        adapter.FusedComputeMetricsCallback(postprocessors=[object()])
    with pytest.raises(ValueError, match="already trains with FusedCE"):
        adapter.use_fused_ce(adapter.use_fused_ce(_sasrec(lastfm)))
    loss = adapter.FusedCE(item_weights=lambda: torch.randn(n, DIM))
    hidden = torch.randn(*train_batch["positive_labels"].shape[:2], DIM)
    with pytest.raises(ValueError, match="positive_labels must be"):
        loss(hidden, None, train_batch["positive_labels"].repeat(1, 1, 2), None, None,
             train_batch["target_padding_mask"].repeat(1, 1, 2))
    with pytest.raises(ValueError, match="target_padding_mask has shape"):
        loss(hidden, None, train_batch["positive_labels"], None, None, train_batch["target_padding_mask"][:, 1:])
    with pytest.raises(ValueError, match="model_embeddings must be"):
        loss(hidden[:, 1:], None, train_batch["positive_labels"], None, None, train_batch["target_padding_mask"])
    with pytest.raises(AttributeError, match="no item table"):
        adapter.FusedCE()(hidden, None, train_batch["positive_labels"], None, None,
                          train_batch["target_padding_mask"])
    module = adapter.FusedLightningModule(_sasrec(lastfm))
    module.candidates_to_score = torch.arange(5)
    with pytest.raises(ValueError, match="candidates_to_score"):
        module.validation_step({"feature_tensors": {}, "padding_mask": None}, 0)
    with pytest.raises(ValueError, match="seen-items column"):
        adapter.fused_top_k(torch.randn(2, DIM), torch.randn(n, DIM), 5, seen_ids=torch.zeros(2, 3))
