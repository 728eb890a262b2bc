"""The RecTools adapter against the installed RecTools, on LastFM (S3-Rec
format, leave-one-out by RecTools' own LastNSplitter): its fused loss equals
RecTools' own ``"softmax"`` loss in value and gradients, its fused ranking
gives RecTools' own recommendations and metrics, and RecTools' own trainer
trains with it and evaluates without the dense catalog scores."""

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.integrations.client import import_client

import_client("rectools")

from pytorch_lightning import Callback, Trainer  # noqa: E402
from rectools import Columns  # noqa: E402
from rectools.dataset import Dataset, Interactions  # noqa: E402
from rectools.metrics import NDCG, HitRate, calc_metrics  # noqa: E402
from rectools.model_selection import LastNSplitter  # noqa: E402
from rectools.models.nn.transformers.lightning import TransformerLightningModule  # noqa: E402
from rectools.models.nn.transformers.similarity import DistanceSimilarityModule  # noqa: E402
from rectools.models.nn.transformers.utils import leave_one_out_mask  # noqa: E402
from rectools.models.rank import TorchRanker  # noqa: E402

from tfllmer_fast import HeadOptions  # noqa: E402
from tfllmer_fast.integrations import rectools as fr  # noqa: E402

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
LASTFM = DATA / "LastFM.txt"
SMALL = dict(n_factors=32, n_blocks=1, n_heads=2, session_max_len=20, batch_size=128, dropout_rate=0.1,
             deterministic=True)

pytestmark = [
    pytest.mark.skipif(not LASTFM.exists(), reason=f"needs the shared data set {LASTFM}"),
    # RecTools' and Lightning's own notices (no item features, no val loader, pydantic).
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning"),
]


def trainer_with(callbacks=(), epochs=2):
    return Trainer(max_epochs=epochs, min_epochs=epochs, deterministic=True, enable_progress_bar=False,
                   enable_model_summary=False, logger=False, enable_checkpointing=False, devices=1,
                   accelerator="cpu", callbacks=list(callbacks), num_sanity_val_steps=0)


class EpochLosses(Callback):
    def __init__(self):
        self.train, self.val = [], []

    def on_train_epoch_end(self, trainer, pl_module):
        self.train.append(float(trainer.callback_metrics["train_loss"]))
        if "val_loss" in trainer.callback_metrics:
            self.val.append(float(trainer.callback_metrics["val_loss"]))


@pytest.fixture(scope="module")
def split():
    torch.set_num_threads(min(2, torch.get_num_threads()))
    df = fr.s3rec_interactions(LASTFM)
    train_ids, test_ids, _ = next(iter(LastNSplitter(n=1, n_splits=1, filter_already_seen=False).split(
        Interactions(df), collect_fold_stats=False)))
    train, test = df.iloc[train_ids], df.iloc[test_ids]
    return Dataset.construct(train), train, test


def _no_dense(*args, **kwargs):
    raise AssertionError("a dense (B, N) score matrix was built")


@pytest.fixture(scope="module")
def trained(split):
    """(c) Two epochs through RecTools' own trainer (with a leave-one-out
    validation loss), the dense logits and RecTools' dense ranker made to raise."""
    dataset, _, test = split
    model = fr.FusedSASRecModel(**SMALL, epochs=2, get_val_mask_func=leave_one_out_mask,
                                get_trainer_func=lambda: trainer_with([EpochLosses()]))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DistanceSimilarityModule, "_get_full_catalog_logits", _no_dense)
        mp.setattr(TorchRanker, "rank", _no_dense)
        torch.manual_seed(0)
        model.fit(dataset)
        reco = model.recommend(test[Columns.User].unique(), dataset, k=10, filter_viewed=True)
    # RecTools fits a deep copy of its trainer, callbacks included.
    losses = next(c for c in model.fit_trainer.callbacks if isinstance(c, EpochLosses))
    return model, losses, reco


def metrics_of(reco, test, train):
    return calc_metrics({"ndcg@10": NDCG(k=10), "hr@10": HitRate(k=10)}, reco, test, prev_interactions=train)


def test_trains_through_rectools_trainer_and_ranks_fused(split, trained):
    _, train, test = split
    model, losses, reco = trained
    assert isinstance(model.lightning_model, fr.FusedLightningModule) and model.loss == fr.FUSED_LOSS
    assert len(losses.train) == 2 and losses.train[1] < losses.train[0], losses.train
    assert len(losses.val) == 2 and all(np.isfinite(losses.val)), losses.val
    metrics = metrics_of(reco, test, train)
    assert all(np.isfinite(v) for v in metrics.values()) and metrics["hr@10"] > 0, metrics
    assert reco.groupby(Columns.User).size().eq(10).all()
    seen = set(zip(train[Columns.User], train[Columns.Item]))
    assert not any(pair in seen for pair in zip(reco[Columns.User], reco[Columns.Item]))
    with pytest.MonkeyPatch.context() as mp:  # the patch that guarded the fit does catch the dense path
        mp.setattr(TorchRanker, "rank", _no_dense)
        with pytest.raises(AssertionError, match="dense"):
            _dense_recommend(model, test[Columns.User].unique()[:5], split[0], k=10, filter_viewed=True)


def _batch(model, seed=0):
    np.random.seed(seed)
    torch.manual_seed(seed)
    return next(iter(model.data_preparator.get_dataloader_train()))


def _loss_and_grads(lm, loss_fn):
    lm.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in lm.torch_model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def _assert_equal_to_rectools(model, options_for_reference=None):
    lm = model.lightning_model.eval()  # dropout off: both passes see the same network
    batch = _batch(model)
    assert (batch["y"] == 0).any() and (batch["y"] != 0).any()

    def reference():
        if options_for_reference is None:
            logits = lm.get_batch_logits(batch)
        else:
            item_embs = lm.torch_model.item_model.get_all_embeddings()
            hidden = lm.torch_model.encode_sessions(batch, item_embs)
            logits = hidden @ torch.nn.functional.normalize(item_embs, dim=-1).T
        return TransformerLightningModule._calc_softmax_loss(logits, batch["y"], batch["yw"])

    ref_loss, ref_grads = _loss_and_grads(lm, reference)
    fused_loss, fused_grads = _loss_and_grads(lm, lambda: lm._calc_custom_loss(batch, 0))
    assert abs(float(fused_loss) - float(ref_loss)) <= 1e-6 * abs(float(ref_loss))
    table = next(n for n in ref_grads if n.endswith("ids_emb.weight"))
    assert set(fused_grads) == set(ref_grads)
    for name, g in ref_grads.items():
        err = float((fused_grads[name] - g).abs().max()) / max(float(g.abs().max()), 1e-30)
        assert err <= (1e-5 if name == table else 1e-4), (name, err)


def test_loss_and_gradients_equal_rectools_softmax_sasrec(trained):
    _assert_equal_to_rectools(trained[0])


@pytest.mark.parametrize("kind", ["bert4rec", "cosine_logits_t", "normalized_head"])
def test_loss_and_gradients_equal_rectools_softmax_variants(split, kind):
    dataset = split[0]
    if kind == "bert4rec":
        model = fr.FusedBERT4RecModel(**SMALL, epochs=1, mask_prob=0.3, get_trainer_func=lambda: trainer_with(epochs=1))
    elif kind == "cosine_logits_t":
        model = fr.FusedSASRecModel(**SMALL, epochs=1, similarity_module_kwargs={"distance": "cosine"},
                                    lightning_module_kwargs={"logits_t": 0.2},
                                    get_trainer_func=lambda: trainer_with(epochs=1))
    else:
        model = fr.FusedSASRecModel(**SMALL, epochs=1, head_options=HeadOptions(),
                                    get_trainer_func=lambda: trainer_with(epochs=1))
    torch.manual_seed(1)
    model.fit(dataset)
    if kind == "cosine_logits_t":
        assert model.lightning_model.loss_options() == HeadOptions(0.2, True, True, model.lightning_model.loss_options().eps)
    _assert_equal_to_rectools(model, HeadOptions() if kind == "normalized_head" else None)


def _dense_recommend(model, users, dataset, **kwargs):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fr.FusedLightningModule, "_recommend_u2i", TransformerLightningModule._recommend_u2i)
        return model.recommend(users, dataset, **kwargs)


def _assert_same_reco(fused, dense):
    key = [Columns.User, Columns.Rank]
    fused, dense = fused.sort_values(key).reset_index(drop=True), dense.sort_values(key).reset_index(drop=True)
    assert fused[key].equals(dense[key])
    np.testing.assert_allclose(fused[Columns.Score], dense[Columns.Score], rtol=1e-5, atol=1e-6)
    # Ties aside: an item may swap only with one of (nearly) the same score.
    swapped = fused[Columns.Item].to_numpy() != dense[Columns.Item].to_numpy()
    near = np.isclose(fused[Columns.Score], dense[Columns.Score], rtol=1e-5, atol=1e-6)
    assert near[swapped].all() and swapped.mean() < 0.01


def test_fused_ranking_equals_rectools_dense_ranking(split, trained):
    dataset, train, test = split
    model, _, fused = trained
    users = test[Columns.User].unique()
    dense = _dense_recommend(model, users, dataset, k=10, filter_viewed=True)
    _assert_same_reco(fused, dense)
    assert metrics_of(fused, test, train) == pytest.approx(metrics_of(dense, test, train), abs=2 / len(users))


def test_fused_ranking_whitelist_and_unfiltered(split, trained):
    dataset, train, _ = split
    model = trained[0]
    users = train[Columns.User].unique()[:200]
    whitelist = np.sort(train[Columns.Item].unique())[::7]
    for kwargs in (dict(filter_viewed=True, items_to_recommend=whitelist), dict(filter_viewed=False)):
        fused = model.recommend(users, dataset, k=25, **kwargs)
        _assert_same_reco(fused, _dense_recommend(model, users, dataset, k=25, **kwargs))
    assert set(model.recommend(users, dataset, k=25, filter_viewed=True, items_to_recommend=whitelist)
               [Columns.Item]) <= set(whitelist)


def test_config_round_trips_head_options(trained):
    model = fr.FusedSASRecModel(**SMALL, head_options=HeadOptions(temperature=0.5))
    for config in (model.get_config(), model.get_config(simple_types=True)):
        again = fr.FusedSASRecModel.from_config(config)
        assert again.lightning_module_type is fr.FusedLightningModule and again.loss == fr.FUSED_LOSS
        assert fr.head_options_from(again.lightning_module_kwargs["head_options"]) == HeadOptions(temperature=0.5)


def test_bad_input_names_the_argument(trained):
    with pytest.raises(TypeError, match="head_options"):
        fr.FusedSASRecModel(head_options="cosine")
    with pytest.raises(ValueError, match="temperature"):
        fr.FusedSASRecModel(head_options={"temperature": -1.0})
    with pytest.raises(TypeError, match="head_options"):
        fr.FusedSASRecModel(head_options=HeadOptions(), lightning_module_kwargs={"head_options": HeadOptions()})
    h, e = torch.randn(2, 3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match="y has shape"):
        fr.fused_softmax_loss(h, e, torch.ones(2, 4, dtype=torch.long), torch.ones(2, 4))
    with pytest.raises(ValueError, match="w has shape"):
        fr.fused_softmax_loss(h, e, torch.ones(2, 3, dtype=torch.long), torch.ones(2))
    users = np.arange(2)
    with pytest.raises(ValueError, match="sorted_item_ids_to_recommend"):
        fr.rank_u2i(h[:, 0], e, users, 2, sorted_item_ids_to_recommend=np.array([1, 9]))
    from scipy import sparse
    with pytest.raises(ValueError, match="ui_csr_for_filter"):
        fr.rank_u2i(h[:, 0], e, users, 2, ui_csr_for_filter=sparse.csr_matrix((3, 5)))
    with pytest.raises(ValueError, match="user_embs"):
        fr.rank_u2i(h[:, 0], e, np.arange(3), 2)


class OtherSimilarity(DistanceSimilarityModule):
    def _get_full_catalog_logits(self, session_embs, item_embs):
        return session_embs @ item_embs.T * 2


def test_unsupported_similarity_module_is_named(split):
    model = fr.FusedSASRecModel(**SMALL, epochs=1, similarity_module_type=OtherSimilarity,
                                get_trainer_func=lambda: trainer_with(epochs=1))
    with pytest.raises(TypeError, match="similarity_module_type"):
        model.fit(split[0])
