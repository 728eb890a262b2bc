"""RecBole 1.2 sequential models trained and ranked by the fused ops.

``FusedSASRec``, ``FusedGRU4Rec`` and ``FusedBERT4Rec`` are RecBole's own
models (same layers, same ``state_dict``, ``loss_type='CE'``) whose
``calculate_loss`` is ``normalized_softmax_ce`` against the item table, and
``FusedTrainer`` is RecBole's ``Trainer`` whose full-sort evaluation takes
``topk_scores`` with the padding item and RecBole's history left out, then
fills the ``Collector`` exactly as it does from dense scores, so RecBole's
own metrics (Hit, MRR, NDCG, Recall, Precision, MAP, ItemCoverage, ...)
compute unchanged. Neither path builds the (B, N) score matrix::

    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from tfllmer_fast.integrations.recbole import FusedSASRec, FusedTrainer

    config = Config(model=FusedSASRec, dataset="ml-1m", config_dict={"train_neg_sample_args": None})
    train, valid, test = data_preparation(config, create_dataset(config))
    model = FusedSASRec(config, train.dataset).to(config["device"])
    trainer = FusedTrainer(config, model)
    trainer.fit(train, valid)
    trainer.evaluate(test, load_best_model=True)

The head options come from the config key ``fused_head`` (a dict of
``HeadOptions`` fields, e.g. ``{"normalize_items": True}`` for the TF-LLMER
head) or the models' ``options=`` argument; by default ``PLAIN_CE``, which is
RecBole's own cross-entropy (same loss, same gradients).

The classes keep their base model's ``__name__`` ("SASRec", ...): RecBole's
``Config`` reads a model's defaults (``properties/model/<name>.yaml``), its
dataset class and its dataloaders by that name, and stock RecBole loads a
checkpoint written here into the plain model (with ``PLAIN_CE``, the plain
model scores exactly as this one does).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from ..ops import normalized_softmax_ce
from ..ops.ranking import topk_scores
from ..options import HeadOptions, resolve_head_options
from ._common import PLAIN_CE, exclusions_from_pairs, require

_INSTALL = "pip install recbole==1.2.1 'numpy<2' 'pandas<2.3' 'setuptools<81'"
require("recbole", _INSTALL)

from recbole.evaluator import Collector  # noqa: E402
from recbole.evaluator.register import metric_information  # noqa: E402
from recbole.model.sequential_recommender import BERT4Rec, GRU4Rec, SASRec  # noqa: E402
from recbole.trainer import Trainer  # noqa: E402

CONFIG_KEY = "fused_head"
"""The RecBole config key holding the head options: a dict of ``HeadOptions`` fields."""

DENSE_NEEDS = ("rec.score", "rec.meanrank")
"""Collector resources that need every item's score; the fused evaluation has only the top-k."""


def head_options(config, options: HeadOptions | None = None) -> HeadOptions:
    """The validated head options of a model: ``options``, or the config's
    ``fused_head`` dict (``HeadOptions`` field names), or ``PLAIN_CE``."""
    from_config = config[CONFIG_KEY] if config is not None else None
    if options is not None and from_config is not None:
        raise TypeError(f"pass the head options either as options= or as the config key {CONFIG_KEY!r}, not both")
    if options is not None:
        return resolve_head_options(options)
    if from_config is None:
        return PLAIN_CE
    if isinstance(from_config, HeadOptions):
        return resolve_head_options(from_config)
    if not isinstance(from_config, dict):
        raise TypeError(f"config[{CONFIG_KEY!r}] must be a dict of HeadOptions fields "
                        f"({', '.join(HeadOptions._fields)}), got {type(from_config).__name__}")
    try:
        return resolve_head_options(None, {**PLAIN_CE._asdict(), **from_config})
    except TypeError as err:
        raise TypeError(f"config[{CONFIG_KEY!r}]: {err}") from err


class FusedHeadMixin:
    """What the fused models share: the head options and the two methods both
    the loss and the evaluation score through.

    ``fused_query(interaction)`` -> (B, d') the query of each row's next item;
    ``fused_items()`` -> (N, d') the table it is scored against, N = RecBole's
    ``n_items`` (the padding item 0 included, as in ``full_sort_predict``).
    The scores ``fused_query(x) @ fused_items().T`` (with ``PLAIN_CE``) are
    ``full_sort_predict(x)``.
    """

    fused_options: HeadOptions

    def __init__(self, config, dataset, *, options: HeadOptions | None = None):
        super().__init__(config, dataset)
        if self.loss_type != "CE":
            raise ValueError(f"the fused head trains the full-softmax cross-entropy: config['loss_type'] must be "
                             f"'CE', got {self.loss_type!r}")
        self.fused_options = head_options(config, options)

    def fused_query(self, interaction) -> Tensor:
        raise NotImplementedError

    def fused_items(self) -> Tensor:
        raise NotImplementedError


class FusedNextItemMixin(FusedHeadMixin):
    """SASRec / GRU4Rec: the query is ``forward(item_seq, item_seq_len)`` (the
    output at the last position), the table ``item_embedding.weight``. The loss
    equals RecBole's ``CE``::

        F.cross_entropy(forward(seq, len) @ item_embedding.weight.T, pos_items)
    """

    def fused_query(self, interaction) -> Tensor:
        return self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])

    def fused_items(self) -> Tensor:
        return self.item_embedding.weight

    def calculate_loss(self, interaction) -> Tensor:
        """Mean cross-entropy over the batch's B rows, fp32, without the (B, N) logits."""
        return normalized_softmax_ce(self.fused_query(interaction), self.fused_items(),
                                     interaction[self.POS_ITEM_ID], options=self.fused_options)


class FusedMaskedItemMixin(FusedHeadMixin):
    """BERT4Rec: the loss is over the masked positions (``MASK_INDEX > 0``,
    as RecBole counts them) against ``item_embedding.weight[:n_items]`` (the
    mask token's row left out) plus ``output_bias``; RecBole's ``CE``::

        q = forward(masked_seq).gather(masked_index)            # (B, M, d)
        logits = q @ item_embedding.weight[:n_items].T + output_bias
        (F.cross_entropy(logits, pos, reduction="none") * w).sum() / w.sum(),  w = masked_index > 0

    The fused op scores ``<h, e_j>`` only, so with ``normalize_items=False``
    the bias enters as one more column: ``h' = [h, 1]``, ``e'_j = [e_j, b_j]``
    (same logits, and ``output_bias`` gets its gradient through that column).
    With ``normalize_items=True`` (the TF-LLMER head, ``<h, e_j / ||e_j||> / T``)
    a bias has no place in the normalized row, so ``output_bias`` is not used
    there (it stays as initialized, zero). The evaluation query is RecBole's
    own: the mask token appended after the sequence (``reconstruct_test_data``).
    """

    def _with_bias(self, query: Tensor) -> Tensor:
        if self.fused_options.normalize_items:
            return query
        return torch.cat([query, query.new_ones(query.shape[:-1] + (1,))], dim=-1)

    def fused_query(self, interaction) -> Tensor:
        seq_len = interaction[self.ITEM_SEQ_LEN]
        output = self.forward(self.reconstruct_test_data(interaction[self.ITEM_SEQ], seq_len))
        return self._with_bias(self.gather_indexes(output, seq_len - 1))

    def fused_items(self) -> Tensor:
        table = self.item_embedding.weight[: self.n_items]
        if self.fused_options.normalize_items:
            return table
        return torch.cat([table, self.output_bias[:, None].to(table.dtype)], dim=1)

    def calculate_loss(self, interaction) -> Tensor:
        """Mean cross-entropy over the masked positions, fp32, without the (B, M, N) logits."""
        masked_seq = interaction[self.MASK_ITEM_SEQ]
        masked_index = interaction[self.MASK_INDEX]  # (B, M), 0 where no mask was drawn
        output = self.forward(masked_seq)  # (B, L, d)
        index = masked_index[..., None].expand(-1, -1, output.shape[-1])
        query = self._with_bias(torch.gather(output, 1, index))  # (B, M, d')
        targets = torch.where(masked_index > 0, interaction[self.POS_ITEMS], -100)
        return normalized_softmax_ce(query, self.fused_items(), targets, options=self.fused_options,
                                     ignore_index=-100)


class FusedSASRec(FusedNextItemMixin, SASRec):
    """RecBole's ``SASRec`` trained with ``normalized_softmax_ce`` (see ``FusedNextItemMixin``)."""


class FusedGRU4Rec(FusedNextItemMixin, GRU4Rec):
    """RecBole's ``GRU4Rec`` trained with ``normalized_softmax_ce`` (see ``FusedNextItemMixin``)."""


class FusedBERT4Rec(FusedMaskedItemMixin, BERT4Rec):
    """RecBole's ``BERT4Rec`` trained with ``normalized_softmax_ce`` (see ``FusedMaskedItemMixin``)."""


for _cls, _base in ((FusedSASRec, SASRec), (FusedGRU4Rec, GRU4Rec), (FusedBERT4Rec, BERT4Rec)):
    # RecBole finds a model's defaults, dataset class and dataloaders by this name;
    # pickling (the checkpoint holds the Config, which holds the class) goes by __qualname__.
    _cls.__name__ = _base.__name__


class RankedBatch(NamedTuple):
    """One evaluation batch's top-k, what ``FusedCollector`` takes in place of
    the dense scores: ``indices`` (B, k) item ids, best first, -1 where a row
    had fewer than k candidates."""

    indices: Tensor


class FusedCollector(Collector):
    """RecBole's ``Collector`` that also takes a ``RankedBatch``: ``rec.items``
    is its indices and ``rec.topk`` is ``[pos_idx (B, k), pos_len (B, 1)]`` int32,
    as ``Collector.eval_batch_collect`` computes them from dense scores::

        pos = zeros(B, N, int32); pos[positive_u, positive_i] = 1
        cat([pos.gather(1, topk_idx), pos.sum(1, keepdim=True)], 1)

    here from the (row, item) pairs, without the (B, N) matrix."""

    def eval_batch_collect(self, scores_tensor, interaction, positive_u: Tensor, positive_i: Tensor):
        if not isinstance(scores_tensor, RankedBatch):
            return super().eval_batch_collect(scores_tensor, interaction, positive_u, positive_i)
        needs = [need for need in DENSE_NEEDS if self.register.need(need)]
        if needs:
            raise ValueError(f"config['metrics'] needs {', '.join(needs)} (every item's score), which the fused "
                             "top-k evaluation does not compute")
        indices = scores_tensor.indices
        if self.register.need("rec.items"):
            self.data_struct.update_tensor("rec.items", indices)
        if self.register.need("rec.topk"):
            self.data_struct.update_tensor("rec.topk", topk_hits(indices, positive_u, positive_i))


def topk_hits(indices: Tensor, positive_u: Tensor, positive_i: Tensor) -> Tensor:
    """``[pos_idx, pos_len]`` (B, k + 1) int32: whether each top-k item (B, k)
    is one of its row's positives, and each row's number of distinct positives;
    positives as (row, item) pairs, repeats allowed."""
    num_rows = indices.shape[0]
    rows = positive_u.to(indices.device).long()
    items = positive_i.to(indices.device).long()
    span = max(int(indices.max()) if indices.numel() else 0, int(items.max()) if items.numel() else 0) + 1
    positives = torch.unique(rows * span + items)
    pos_len = torch.bincount(positives // span, minlength=num_rows)[:num_rows]
    keys = torch.arange(num_rows, device=indices.device)[:, None] * span + indices
    pos_idx = torch.isin(keys, positives) & (indices >= 0)
    return torch.cat([pos_idx.int(), pos_len[:, None].int()], dim=1)


class FusedTrainer(Trainer):
    """RecBole's ``Trainer`` for a model with ``fused_query`` / ``fused_items``
    (``FusedHeadMixin``): training is the model's own ``calculate_loss``; the
    full-sort evaluation is ``topk_scores`` over ``fused_items()`` with item 0
    (padding) and RecBole's ``history_index`` (the seen items of general
    models; none for sequential ones) left out, where RecBole sets their scores
    to -inf. Plain torch equivalent of one batch::

        s = model.full_sort_predict(x); s[:, 0] = -inf; s[history_index] = -inf
        torch.topk(s, max(config["topk"]))

    Metrics that need every score (AUC, GAUC, LogLoss, ...) raise at construction.

    Checkpoints: RecBole's ``Trainer`` reloads its checkpoints with
    ``torch.load``, whose ``weights_only=True`` default (torch >= 2.6) rejects
    the ``Config`` object RecBole stores in them; this trainer loads them with
    ``weights_only=False`` (``evaluate(load_best_model=True)``,
    ``resume_checkpoint``), which unpickles arbitrary objects: pass it only
    files you trust (its own ``saved_model_file`` or your own runs').
    """

    def __init__(self, config, model):
        if not isinstance(model, FusedHeadMixin):
            raise TypeError(f"model must have the fused head (FusedSASRec, FusedGRU4Rec, FusedBERT4Rec or a "
                            f"FusedHeadMixin subclass), got {type(model).__qualname__}")
        metrics = config["metrics"]
        metrics = [metrics] if isinstance(metrics, str) else metrics
        dense = sorted({m.lower() for m in metrics if set(metric_information.get(m.lower(), ())) & set(DENSE_NEEDS)})
        if dense:
            raise ValueError(f"config['metrics'] has {', '.join(dense)}, which need every item's score; the fused "
                             "evaluation serves top-k metrics (Hit, MRR, NDCG, Recall, Precision, MAP, ...)")
        super().__init__(config, model)
        self.eval_collector = FusedCollector(config)

    def _full_sort_batch_eval(self, batched_data):
        interaction, history_index, positive_u, positive_i = batched_data
        interaction = interaction.to(self.device)
        query = self.model.fused_query(interaction)
        items = self.model.fused_items()
        if items.shape[0] != self.tot_item_num:
            raise ValueError(f"model.fused_items() has {items.shape[0]} rows, the dataset {self.tot_item_num} items")
        rows = torch.arange(query.shape[0], device=query.device)
        seen = torch.zeros_like(rows)
        if history_index is not None:
            rows = torch.cat([rows, history_index[0].to(query.device).long()])
            seen = torch.cat([seen, history_index[1].to(query.device).long()])
        exclude = exclusions_from_pairs(rows, seen, query.shape[0])
        k = min(max(self.config["topk"]), items.shape[0])
        top = topk_scores(query, items, k, options=self.model.fused_options, exclude=exclude)
        return interaction, RankedBatch(top.indices), positive_u, positive_i

    def _load(self, checkpoint_file) -> dict:
        # RecBole's own format (the Config pickled beside the state_dict): weights_only=True cannot read it.
        return torch.load(checkpoint_file, map_location=self.device, weights_only=False)

    @torch.no_grad()
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        """``Trainer.evaluate``, the checkpoint read with ``weights_only=False`` (see the class)."""
        if eval_data and load_best_model:
            checkpoint_file = model_file or self.saved_model_file
            checkpoint = self._load(checkpoint_file)
            self.model.load_state_dict(checkpoint["state_dict"])
            self.model.load_other_parameter(checkpoint.get("other_parameter"))
            self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
        return super().evaluate(eval_data, load_best_model=False, show_progress=show_progress)

    def resume_checkpoint(self, resume_file):
        """``Trainer.resume_checkpoint``, the file read with ``weights_only=False`` (see the class)."""
        self.saved_model_file = str(resume_file)
        checkpoint = self._load(self.saved_model_file)
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        if checkpoint["config"]["model"].lower() != self.config["model"].lower():
            self.logger.warning(f"resume_file was written by model {checkpoint['config']['model']!r}, this "
                                f"trainer's is {self.config['model']!r}; its state_dict may not load")
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")


def s3rec_to_atomic(source: str | os.PathLike, data_path: str | os.PathLike, name: str | None = None) -> str:
    """Write an S3-Rec file (one line per user: ``user item item ...``, items
    in time order) as RecBole's atomic ``<data_path>/<name>/<name>.inter``
    (``user_id:token item_id:token timestamp:float``, timestamp = position in
    the line); ``name`` defaults to the file's stem. Returns ``name``, the
    ``dataset`` to pass to ``Config``."""
    source = Path(source)
    if not source.is_file():
        raise FileNotFoundError(f"source {str(source)!r} is not a file")
    name = name or source.stem
    target = Path(data_path) / name
    target.mkdir(parents=True, exist_ok=True)
    with source.open() as lines, (target / f"{name}.inter").open("w") as out:
        out.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for number, line in enumerate(lines, 1):
            user, *items = line.split()
            if not items and user:
                raise ValueError(f"source line {number} has a user and no items")
            out.writelines(f"{user}\t{item}\t{position}\n" for position, item in enumerate(items))
    return name


def leave_one_out_config(data_path: str | os.PathLike, max_len: int = 50) -> dict:
    """The config dict of the S3-Rec protocol on atomic files from
    ``s3rec_to_atomic``: leave-one-out by time (the last item tests, the one
    before validates), full ranking over all items, ``max_len`` items of
    history, cross-entropy (no negative sampling)."""
    return {
        "data_path": str(data_path),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
        "MAX_ITEM_LIST_LENGTH": int(max_len),
        "loss_type": "CE",
        "train_neg_sample_args": None,
    }


__all__ = [
    "CONFIG_KEY",
    "FusedBERT4Rec",
    "FusedCollector",
    "FusedGRU4Rec",
    "FusedHeadMixin",
    "FusedMaskedItemMixin",
    "FusedNextItemMixin",
    "FusedSASRec",
    "FusedTrainer",
    "RankedBatch",
    "head_options",
    "leave_one_out_config",
    "s3rec_to_atomic",
    "topk_hits",
]
