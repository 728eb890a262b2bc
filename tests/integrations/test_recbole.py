"""The RecBole adapter against RecBole itself, on LastFM (S3-Rec) through
RecBole's own Config / create_dataset / data_preparation (leave-one-out,
full ranking): the loss and gradients of its CE, the metrics of its dense
full-sort evaluation, a run of its Trainer."""

import copy
import math
from pathlib import Path

import pytest
import torch

from tests.integrations.client import import_client

import_client("recbole")

from recbole.config import Config  # noqa: E402
from recbole.data import create_dataset, data_preparation  # noqa: E402
from recbole.model.sequential_recommender import BERT4Rec, GRU4Rec, SASRec  # noqa: E402
from recbole.trainer import Trainer  # noqa: E402
from recbole.utils import init_seed  # noqa: E402

from tfllmer_fast import HeadOptions  # noqa: E402
from tfllmer_fast.integrations import recbole as fused  # noqa: E402
from tfllmer_fast.integrations._common import PLAIN_CE  # noqa: E402

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
LASTFM = DATA / "LastFM.txt"
pytestmark = pytest.mark.skipif(not LASTFM.is_file(), reason=f"needs the S3-Rec LastFM file at {LASTFM}")

PAIRS = [(fused.FusedSASRec, SASRec), (fused.FusedGRU4Rec, GRU4Rec), (fused.FusedBERT4Rec, BERT4Rec)]
SMALL = {"hidden_size": 32, "inner_size": 64, "embedding_size": 32, "n_layers": 1, "n_heads": 2}
METRICS = ["Recall", "MRR", "NDCG", "Hit", "Precision", "MAP", "ShannonEntropy"]


@pytest.fixture(scope="module")
def atomic(tmp_path_factory):
    root = tmp_path_factory.mktemp("recbole")
    name = fused.s3rec_to_atomic(LASTFM, root / "data")
    # The training run takes LastFM's first 300 users: RecBole's SASRec steps at ~0.2 s on 2 CPU cores.
    head = root / f"{name}300.txt"
    head.write_text("".join(LASTFM.read_text().splitlines(keepends=True)[:300]))
    fused.s3rec_to_atomic(head, root / "data")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    # RecBole's Trainer opens a TensorBoard writer under ./log_tensorboard.
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        yield root, name


_PREPARED = {}


def prepare(atomic, model_class, users="", **settings):
    """RecBole's own pipeline on the atomic LastFM (``users="300"``: its first
    300 users): (config, train, valid, test); the data is built once per model
    class and ``settings`` go into a copy of its config."""
    root, name = atomic
    name += users
    if (model_class, name) not in _PREPARED:
        config_dict = {**fused.leave_one_out_config(root / "data"), **SMALL, "checkpoint_dir": str(root / "saved"),
                       "use_gpu": False, "state": "WARNING", "show_progress": False, "train_batch_size": 256,
                       "eval_batch_size": 512, "metrics": METRICS, "topk": [5, 10, 20], "valid_metric": "NDCG@10"}
        config = Config(model=model_class, dataset=name, config_dict=config_dict)
        init_seed(config["seed"], config["reproducibility"])
        _PREPARED[model_class, name] = (config, *data_preparation(config, create_dataset(config)))
    config, train, valid, test = _PREPARED[model_class, name]
    config = copy.deepcopy(config)
    for key, value in settings.items():
        config[key] = value
    init_seed(config["seed"], config["reproducibility"])
    return config, train, valid, test


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("fused_class, plain_class", PAIRS, ids=lambda c: c.__qualname__)
def test_loss_and_gradients_equal_recboles_ce(atomic, fused_class, plain_class):
    config, train, _, _ = prepare(atomic, fused_class)
    model = fused_class(config, train.dataset)
    reference = plain_class(config, train.dataset)
    reference.load_state_dict(model.state_dict())
    if plain_class is BERT4Rec:  # a nonzero output bias, so its column is tested
        with torch.no_grad():
            model.output_bias.normal_(0, 0.5)
            reference.output_bias.copy_(model.output_bias)
    model.eval(), reference.eval()  # dropout off: both sides see the same graph
    batch = next(iter(train))
    loss, expected = model.calculate_loss(batch), reference.calculate_loss(batch)
    loss.backward(), expected.backward()
    assert loss.dtype == torch.float32
    assert abs(loss.item() - expected.item()) <= 1e-6 * abs(expected.item())
    assert rel(model.item_embedding.weight.grad, reference.item_embedding.weight.grad) <= 1e-5
    grads = dict(reference.named_parameters())
    for name, parameter in model.named_parameters():
        # Some gradients are zero in exact arithmetic (attention key biases): rounding noise near 1e-14.
        scale = float(grads[name].grad.abs().max())
        assert float((parameter.grad - grads[name].grad).abs().max()) <= 1e-5 * scale + 1e-10, name


@pytest.fixture(scope="module")
def trained(atomic):
    """A FusedSASRec trained 2 epochs by RecBole's loop in FusedTrainer, dense scoring disabled."""
    config, train, valid, test = prepare(atomic, fused.FusedSASRec, users="300", epochs=2, learning_rate=0.003)
    model = fused.FusedSASRec(config, train.dataset)

    def dense(*args):
        raise AssertionError("the fused evaluation called full_sort_predict (B x N scores)")

    model.full_sort_predict = dense
    trainer = fused.FusedTrainer(config, model)
    trainer.fit(train, valid, saved=True)
    result = trainer.evaluate(test, load_best_model=True)
    del model.full_sort_predict
    return config, train, valid, test, trainer, result


def test_training_run_through_recboles_trainer(trained):
    config, _, _, _, trainer, result = trained
    losses = [trainer.train_loss_dict[epoch] for epoch in sorted(trainer.train_loss_dict)]
    assert len(losses) == 2 and losses[1] < losses[0]
    assert set(result) == {f"{m.lower()}@{k}" for m in METRICS for k in (5, 10, 20)}
    assert all(math.isfinite(v) for v in result.values())
    assert result["hit@10"] > 0
    assert trainer.best_valid_result is not None


def test_checkpoint_reload_and_resume(trained):
    config, train, valid, test, trainer, result = trained
    again = fused.FusedTrainer(config, fused.FusedSASRec(config, train.dataset))
    assert again.evaluate(test, load_best_model=True, model_file=trainer.saved_model_file) == result
    again.resume_checkpoint(trainer.saved_model_file)
    saved = torch.load(trainer.saved_model_file, weights_only=False)
    assert again.start_epoch == saved["epoch"] + 1 and again.best_valid_score == trainer.best_valid_score
    assert saved["config"]["model"] == "SASRec" and saved["config"].model_class is fused.FusedSASRec


def dense_and_fused(config, model, plain_class, train, data):
    reference = plain_class(config, train.dataset)
    reference.load_state_dict(model.state_dict())
    dense = Trainer(config, reference).evaluate(data, load_best_model=False)
    return dense, fused.FusedTrainer(config, model).evaluate(data, load_best_model=False)


def test_fused_evaluation_equals_recboles_dense_metrics(trained):
    config, train, valid, test, trainer, _ = trained
    for data in (valid, test):
        dense, result = dense_and_fused(config, trainer.model, SASRec, train, data)
        assert result == dense


@pytest.mark.parametrize("fused_class, plain_class", PAIRS[1:], ids=lambda c: c.__qualname__)
def test_fused_evaluation_equals_dense_untrained(atomic, fused_class, plain_class):
    config, train, valid, _ = prepare(atomic, fused_class)
    model = fused_class(config, train.dataset)
    if plain_class is BERT4Rec:
        with torch.no_grad():
            model.output_bias.normal_(0, 0.5)
    dense, result = dense_and_fused(config, model, plain_class, train, valid)
    assert result == dense


def test_fused_topk_rows_equal_dense_topk(trained):
    """Row by row, not just the metrics: the fused top-20 is RecBole's dense
    top-20 after its own masking (rows with a tie at the cut aside)."""
    config, train, _, test, trainer, _ = trained
    model = trainer.model.eval()
    batch = next(iter(test))
    with torch.no_grad():
        trainer.tot_item_num = test._dataset.item_num
        _, ranked, _, _ = trainer._full_sort_batch_eval(batch)
        scores = SASRec.full_sort_predict(model, batch[0])
    scores[:, 0] = -math.inf
    values, indices = torch.topk(scores, 21, dim=1)
    clear = values[:, 19] > values[:, 20]
    assert clear.float().mean() > 0.99
    assert torch.equal(ranked.indices[clear], indices[clear, :20])


def test_topk_hits_match_the_dense_collector():
    indices = torch.tensor([[3, 1, -1], [2, 0, 4]])
    rows, items = torch.tensor([0, 0, 1, 1, 1]), torch.tensor([1, 5, 4, 4, 3])
    got = fused.topk_hits(indices, rows, items)
    assert got.dtype == torch.int32
    assert got.tolist() == [[0, 1, 0, 2], [0, 0, 1, 2]]


def test_normalized_head_from_the_config_trains_and_ranks(atomic):
    config, train, valid, _ = prepare(atomic, fused.FusedBERT4Rec, fused_head={"normalize_items": True},
                                      epochs=1)
    model = fused.FusedBERT4Rec(config, train.dataset)
    assert model.fused_options == HeadOptions()
    assert model.fused_items().shape == (train.dataset.item_num, config["hidden_size"])
    model.train()
    loss = model.calculate_loss(next(iter(train)))
    loss.backward()
    assert math.isfinite(loss.item()) and model.output_bias.grad is None
    result = fused.FusedTrainer(config, model).evaluate(valid, load_best_model=False)
    assert all(math.isfinite(v) for v in result.values())


def test_head_options_resolution(atomic):
    config, train, _, _ = prepare(atomic, fused.FusedSASRec, fused_head={"temperature": 0.5})
    assert fused.FusedSASRec(config, train.dataset).fused_options == PLAIN_CE._replace(temperature=0.5)
    config["fused_head"] = None
    assert fused.FusedSASRec(config, train.dataset).fused_options == PLAIN_CE
    assert fused.FusedSASRec(config, train.dataset, options=HeadOptions()).fused_options == HeadOptions()


def test_bad_input_names_the_argument(atomic, tmp_path):
    config, train, _, _ = prepare(atomic, fused.FusedSASRec, fused_head={"temprature": 2.0})
    with pytest.raises(TypeError, match="fused_head.*temprature"):
        fused.FusedSASRec(config, train.dataset)
    config["fused_head"] = {"temperature": 0.0}
    with pytest.raises(ValueError, match="temperature"):
        fused.FusedSASRec(config, train.dataset)
    with pytest.raises(TypeError, match="options= or as the config key 'fused_head'"):
        fused.FusedSASRec(config, train.dataset, options=HeadOptions())
    config["fused_head"] = "normalized"
    with pytest.raises(TypeError, match="fused_head.*dict"):
        fused.FusedSASRec(config, train.dataset)
    config, train, _, _ = prepare(atomic, fused.FusedGRU4Rec, loss_type="BPR")
    with pytest.raises(ValueError, match="loss_type"):
        fused.FusedGRU4Rec(config, train.dataset)
    config, train, _, _ = prepare(atomic, fused.FusedSASRec, metrics=["NDCG", "GAUC"])
    with pytest.raises(ValueError, match="metrics.*gauc"):
        fused.FusedTrainer(config, fused.FusedSASRec(config, train.dataset))
    config["metrics"] = METRICS
    with pytest.raises(TypeError, match="model must have the fused head"):
        fused.FusedTrainer(config, SASRec(config, train.dataset))
    with pytest.raises(FileNotFoundError, match="source"):
        fused.s3rec_to_atomic(tmp_path / "missing.txt", tmp_path)
