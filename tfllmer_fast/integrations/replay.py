"""RePlay (``replay-rec[torch]`` 0.22, the ``replay.nn`` API) with the fused head.

Training: ``FusedCE`` is a ``replay.nn.loss.LossProto`` that takes the
model's item table (``model.body.embedder.get_item_weights()``, (N, d), the
padding row left out as RePlay's ``CE`` does) instead of the (B, L, N) logits
from ``logits_callback``, and computes ``normalized_softmax_ce`` with ``CE``'s
masking. ``use_fused_ce(model)`` swaps it into a ``SasRec``::

    model = use_fused_ce(SasRec.from_params(schema, ...))      # RePlay's CE, fused
    model = use_fused_ce(SasRec.from_params(schema, ...), options=HeadOptions())  # TF-LLMER head

Evaluation: ``FusedLightningModule`` (a ``replay.nn.lightning.LightningModule``)
returns each row's last hidden state as ``query_embeddings`` instead of
``logits`` in validation / test / predict, and ``FusedComputeMetricsCallback``,
``FusedPandasTopItemsCallback`` and ``FusedTorchTopItemsCallback`` take the
top-k with ``topk_scores``, RePlay's ``SeenItemsFilter`` turned into
exclusions, so no (B, N) score matrix is built; the metrics are RePlay's own
(``TorchMetricsBuilder``, or ``replay.metrics`` on the top-k frame).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import torch
from torch import Tensor

from ..ops import normalized_softmax_ce
from ..ops.ranking import TopK, topk_scores
from ..options import HeadOptions, resolve_head_options
from ._common import PLAIN_CE, exclusions_from_pairs, read_s3rec, require

_INSTALL = "pip install 'replay-rec[torch]==0.22.0' 'numpy<2.5' 'pandas<3' 'pyarrow<24'"
require("replay", _INSTALL)
require("lightning", _INSTALL)

from replay.nn.lightning import LightningModule  # noqa: E402
from replay.nn.lightning.callback import (  # noqa: E402
    ComputeMetricsCallback,
    PandasTopItemsCallback,
    TorchTopItemsCallback,
)
from replay.nn.lightning.postprocessor import SeenItemsFilter  # noqa: E402
from replay.nn.loss import CE, CEWeighted  # noqa: E402

__all__ = [
    "FusedCE",
    "FusedComputeMetricsCallback",
    "FusedLightningModule",
    "FusedPandasTopItemsCallback",
    "FusedTorchTopItemsCallback",
    "ParquetSplits",
    "fused_top_k",
    "item_table",
    "s3rec_events",
    "s3rec_leave_one_out_parquet",
    "use_fused_ce",
]

_REDUCTIONS = ("mean", "sum", "none")


def s3rec_events(path) -> pd.DataFrame:
    """An S3-Rec file (``user item item ...`` per line, in time order) as a
    pandas events frame for RePlay's preprocessing: ``user_id``, ``item_id``
    and ``timestamp`` (the position in the line), int64."""
    users, items, positions = read_s3rec(path)
    return pd.DataFrame({"user_id": users, "item_id": items, "timestamp": positions})


class ParquetSplits(NamedTuple):
    """Leave-one-out splits written for RePlay's ``ParquetModule``: ``dir`` holds
    ``train.parquet``, ``val.parquet`` and ``test.parquet``; ids are encoded to
    0..num_items-1; ``test_ground_truth`` is the held-out test events frame."""

    dir: Path
    num_items: int
    num_users: int
    interactions: int
    test_ground_truth: pd.DataFrame


def s3rec_leave_one_out_parquet(source, out) -> ParquetSplits:
    """An S3-Rec file through RePlay's own tools (``LabelEncoder``,
    ``LastNSplitter`` twice: the last item of each user tests, the one before
    validates, ``groupby_sequences``), written as parquet sequences under ``out``;
    the validation and test rows carry their ``ground_truth`` item lists."""
    from replay.data.nn.utils import groupby_sequences
    from replay.preprocessing import LabelEncoder, LabelEncodingRule
    from replay.splitters import LastNSplitter

    events = s3rec_events(source)
    encoder = LabelEncoder([LabelEncodingRule("user_id"), LabelEncodingRule("item_id")]).fit(events)
    events = encoder.transform(events)
    splitter = LastNSplitter(N=1, divide_column="user_id", query_column="user_id", strategy="interactions")
    test_events, test_gt = splitter.split(events)
    train_events, val_gt = splitter.split(test_events)

    def sequences(frame, gt=None):
        seqs = groupby_sequences(frame, groupby_col="user_id", sort_col="timestamp")[["user_id", "item_id"]]
        if gt is not None:
            gt = groupby_sequences(gt, groupby_col="user_id", sort_col="timestamp")
            seqs = seqs.merge(gt[["user_id", "item_id"]].rename(columns={"item_id": "ground_truth"}), on="user_id")
        return seqs

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sequences(train_events).to_parquet(out / "train.parquet")
    sequences(train_events, val_gt).to_parquet(out / "val.parquet")
    sequences(test_events, test_gt).to_parquet(out / "test.parquet")
    return ParquetSplits(out, len(encoder.mapping["item_id"]), int(events.user_id.nunique()), len(events), test_gt)


def item_table(model: torch.nn.Module) -> Tensor:
    """The model's item embeddings (N, d) as its dense head scores them: a
    ``SasRec``'s ``body.embedder.get_item_weights()`` (the padding row left
    out), a ``TwoTower``'s ``body.item_tower(None)``."""
    body = getattr(model, "body", None)
    embedder = getattr(body, "embedder", None)
    if embedder is not None and hasattr(embedder, "get_item_weights"):
        return embedder.get_item_weights(None)
    if body is not None and hasattr(body, "item_tower"):
        return body.item_tower(None)
    raise TypeError(f"model must be a replay.nn model with body.embedder.get_item_weights (SasRec) or "
                    f"body.item_tower (TwoTower), got {type(model).__name__}")


class FusedCE(torch.nn.Module):
    """RePlay's full-catalog ``CE`` without the (B, L, N) logits.

    ``forward`` takes what every ``LossProto`` takes: ``model_embeddings``
    (B, L, d), ``positive_labels`` (B, L, 1), ``target_padding_mask`` (B, L, 1)
    (``False`` = no target); the rest is ignored, as ``CE`` ignores it. Plain
    torch equivalent (``options=PLAIN_CE``, RePlay's ``CE`` exactly)::

        labels = positive_labels.masked_fill(~target_padding_mask, ignore_index)
        logits = model_embeddings @ item_table(model).T          # (B, L, N)
        F.cross_entropy(logits.view(-1, N), labels.view(-1), ignore_index=ignore_index,
                        reduction=reduction, label_smoothing=label_smoothing)

    With ``options=HeadOptions()`` the items are L2-normalized (the TF-LLMER
    head). The item table comes from ``item_weights`` (a callable returning
    (N, d)) or, by default, from the model that sets ``logits_callback`` (as
    ``SasRec`` does on construction). ``reduction="none"`` returns the
    (B * L,) per-position losses (0 where masked), as ``CE`` does.
    """

    def __init__(self, options: HeadOptions = PLAIN_CE, *, ignore_index: int = -100, reduction: str = "mean",
                 label_smoothing: float = 0.0, item_weights: Callable[[], Tensor] | None = None):
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        label_smoothing = float(label_smoothing)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1], got {label_smoothing}")
        if item_weights is not None and not callable(item_weights):
            raise TypeError(f"item_weights must be a callable returning the (N, d) item table, "
                            f"got {type(item_weights).__name__}")
        self.options = resolve_head_options(options)
        self.ignore_index = int(ignore_index)
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self._item_weights = item_weights
        self._logits_callback = None

    @classmethod
    def from_ce(cls, ce: CE, options: HeadOptions = PLAIN_CE) -> FusedCE:
        """The fused twin of a RePlay ``CE`` (its ``ignore_index``, ``reduction``
        and ``label_smoothing``); class weights and ``CEWeighted`` are refused,
        the fused op has no per-class weight."""
        if not isinstance(ce, CE):
            raise TypeError(f"ce must be a replay.nn.loss.CE, got {type(ce).__name__} (sampled losses never "
                            "build the full logits; keep them as they are)")
        if isinstance(ce, CEWeighted):
            raise TypeError("ce is a CEWeighted: its per-sample weights are not supported by FusedCE")
        loss = ce._loss
        if loss.weight is not None:
            raise ValueError("ce has class weights (CrossEntropyLoss(weight=...)), which FusedCE does not support")
        return cls(options, ignore_index=loss.ignore_index, reduction=loss.reduction,
                   label_smoothing=loss.label_smoothing)

    @property
    def logits_callback(self) -> Callable:
        """The model's ``get_logits``, as for ``CE``; kept for the protocol and
        as the source of the item table, never called."""
        if self._logits_callback is None:
            raise AttributeError("The callback for getting logits is not defined")
        return self._logits_callback

    @logits_callback.setter
    def logits_callback(self, func: Callable | None) -> None:
        self._logits_callback = func

    def item_table(self) -> Tensor:
        """(N, d): ``item_weights()``, or the table of the model whose
        ``get_logits`` is this loss's ``logits_callback``."""
        if self._item_weights is not None:
            return self._item_weights()
        owner = getattr(self._logits_callback, "__self__", None)
        if owner is None:
            raise AttributeError("FusedCE has no item table: pass item_weights= or build the model with this "
                                 "loss (SasRec(body, loss) sets loss.logits_callback = model.get_logits)")
        return item_table(owner)

    def forward(self, model_embeddings: Tensor, feature_tensors=None, positive_labels: Tensor | None = None,
                negative_labels: Tensor | None = None, padding_mask: Tensor | None = None,
                target_padding_mask: Tensor | None = None) -> Tensor:
        if positive_labels is None or target_padding_mask is None:
            raise ValueError("FusedCE needs positive_labels and target_padding_mask (B, L, 1)")
        if positive_labels.dim() != 3 or positive_labels.size(-1) != 1:
            raise ValueError(f"positive_labels must be (B, L, 1) (one positive per position, as CE requires), "
                             f"got shape {tuple(positive_labels.shape)}")
        if target_padding_mask.shape != positive_labels.shape:
            raise ValueError(f"target_padding_mask has shape {tuple(target_padding_mask.shape)}, expected "
                             f"{tuple(positive_labels.shape)}")
        if model_embeddings.dim() != 3 or model_embeddings.shape[:2] != positive_labels.shape[:2]:
            raise ValueError(f"model_embeddings must be (B, L, d) with (B, L) = {tuple(positive_labels.shape[:2])}, "
                             f"got shape {tuple(model_embeddings.shape)}")
        labels = positive_labels.squeeze(-1).masked_fill(~target_padding_mask.squeeze(-1).bool(), self.ignore_index)
        loss = normalized_softmax_ce(model_embeddings, self.item_table(), labels, options=self.options,
                                     ignore_index=self.ignore_index, reduction=self.reduction,
                                     label_smoothing=self.label_smoothing)
        return loss.reshape(-1) if self.reduction == "none" else loss


def use_fused_ce(model: torch.nn.Module, options: HeadOptions = PLAIN_CE) -> torch.nn.Module:
    """``model`` (a ``SasRec`` or ``TwoTower`` with RePlay's ``CE``) with its
    loss replaced by ``FusedCE.from_ce(model.loss, options)``, in place; returned."""
    loss = getattr(model, "loss", None)
    if isinstance(loss, FusedCE):
        raise ValueError("model already trains with FusedCE")
    fused = FusedCE.from_ce(loss, options)
    item_table(model)  # a model without an item table fails here, not at the first step
    model.loss = fused
    fused.logits_callback = model.get_logits
    return model


def _ranking_options(model: torch.nn.Module, options: HeadOptions | None) -> HeadOptions:
    """``options``, or by default the head the model trains with (its
    ``FusedCE``'s options; ``PLAIN_CE`` for RePlay's own losses)."""
    if options is not None:
        return resolve_head_options(options)
    loss = getattr(model, "loss", None)
    return loss.options if isinstance(loss, FusedCE) else PLAIN_CE


def seen_exclusions(seen_ids: Tensor, num_items: int) -> tuple[Tensor, Tensor]:
    """RePlay's ``SeenItemsFilter`` column (B, S) (ids outside [0, N) are
    padding) as the CSR pair ``(indptr (B + 1,), items)`` of ``topk_scores``."""
    if not isinstance(seen_ids, Tensor) or seen_ids.dim() != 2 or seen_ids.is_floating_point():
        raise ValueError(f"the seen-items column must be an integer (B, S) tensor, got "
                         f"{getattr(seen_ids, 'shape', type(seen_ids).__name__)}")
    seen_ids = seen_ids.long()
    valid = (seen_ids >= 0) & (seen_ids < num_items)
    rows = torch.arange(seen_ids.shape[0], device=seen_ids.device)[:, None].expand_as(seen_ids)
    return exclusions_from_pairs(rows[valid], seen_ids[valid], seen_ids.shape[0])


def fused_top_k(query_embeddings: Tensor, items: Tensor, k: int, *, options: HeadOptions = PLAIN_CE,
                seen_ids: Tensor | None = None) -> TopK:
    """The k best items per row, (B, k) each, seen items never among them.

    ``query_embeddings`` (B, d), ``items`` (N, d), ``seen_ids`` (B, S) as
    RePlay's ``SeenItemsFilter`` reads it. Plain torch equivalent (RePlay's
    dense path)::

        scores = query_embeddings @ items.T; scores[row, seen_ids[row]] = -inf
        torch.topk(scores, k)
    """
    exclude = None if seen_ids is None else seen_exclusions(seen_ids.to(query_embeddings.device), items.shape[0])
    return topk_scores(query_embeddings, items, k, options=options, exclude=exclude)


def _seen_column(postprocessors: Sequence | None) -> str | None:
    """The batch key of the one ``SeenItemsFilter`` (None without one); any
    other postprocessor rewrites dense logits and is refused."""
    postprocessors = list(postprocessors or [])
    for p in postprocessors:
        if not isinstance(p, SeenItemsFilter):
            raise TypeError(f"postprocessors: the fused ranking applies SeenItemsFilter only, got "
                            f"{type(p).__name__} (it edits the dense logits this path never builds)")
    if len(postprocessors) > 1:
        raise ValueError("postprocessors: give at most one SeenItemsFilter")
    return postprocessors[0].seen_items_column if postprocessors else None


class FusedLightningModule(LightningModule):
    """RePlay's ``LightningModule`` whose validation / test / predict steps
    return ``{"query_embeddings": (B, d), "hidden_states": (h,)}`` (the last
    position of ``model.body``'s output, what ``SasRec.forward_inference``
    multiplies by the item table) and no logits; training is unchanged. The
    ``Fused*`` callbacks rank from these outputs."""

    def __init__(self, model: torch.nn.Module, optimizer_factory=None, lr_scheduler_factory=None) -> None:
        if not hasattr(getattr(getattr(model, "body", None), "embedder", None), "get_item_weights"):
            raise TypeError(f"model must be a SasRec-style replay.nn model (model.body.embedder."
                            f"get_item_weights), got {type(model).__name__}")
        super().__init__(model, optimizer_factory=optimizer_factory, lr_scheduler_factory=lr_scheduler_factory)

    def query_embeddings(self, batch: dict) -> dict:
        if batch.get("candidates_to_score") is not None or self.candidates_to_score is not None:
            raise ValueError("candidates_to_score: the fused ranking scores the whole catalog; score a candidate "
                             "subset with RePlay's own LightningModule")
        names = inspect.signature(self.model.body.forward).parameters
        hidden = self.model.body(**{k: v for k, v in batch.items() if k in names})
        return {"query_embeddings": hidden[:, -1, :].contiguous(), "hidden_states": (hidden,)}

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        return self.query_embeddings(batch)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        return self.query_embeddings(batch)

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        return self.query_embeddings(batch)


def _top_k_of_batch(pl_module, outputs: dict, batch: dict, k: int, options: HeadOptions | None,
                    seen_column: str | None) -> TopK:
    if "query_embeddings" not in outputs:
        raise TypeError("the fused callbacks rank FusedLightningModule's outputs (query_embeddings); "
                        f"got {sorted(outputs)} from {type(pl_module).__name__}")
    model = pl_module.model
    with torch.no_grad():
        items = item_table(model)
    seen = None if seen_column is None else batch[seen_column]
    return fused_top_k(outputs["query_embeddings"], items, k, options=_ranking_options(model, options),
                       seen_ids=seen)


class FusedComputeMetricsCallback(ComputeMetricsCallback):
    """RePlay's ``ComputeMetricsCallback`` (same arguments, same metrics and
    logging) fed by ``fused_top_k`` from ``FusedLightningModule`` outputs.
    ``postprocessors`` may hold one ``SeenItemsFilter`` (it becomes the
    exclusion list); ``options`` defaults to the model's training head."""

    def __init__(self, metrics=None, ks=None, postprocessors=None, item_count=None,
                 ground_truth_column: str = "ground_truth", train_column: str = "train", verbose: bool = True,
                 options: HeadOptions | None = None):
        self._seen_column = _seen_column(postprocessors)
        super().__init__(metrics=metrics, ks=ks, postprocessors=None, item_count=item_count,
                         ground_truth_column=ground_truth_column, train_column=train_column, verbose=verbose)
        self._options = None if options is None else resolve_head_options(options)

    def _set_candidates(self, pl_module) -> None:
        if getattr(pl_module, "candidates_to_score", None) is not None:
            raise ValueError("candidates_to_score: the fused ranking scores the whole catalog")
        self._candidates = None

    def _batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx) -> None:
        builder = self._metrics_builders[dataloader_idx]
        top = _top_k_of_batch(pl_module, outputs, batch, builder.max_k, self._options, self._seen_column)
        builder.add_prediction(top.indices, batch[self._ground_truth_column], batch.get(self._train_column))
        if batch_idx + 1 == self._dataloaders_size[dataloader_idx] and not trainer.sanity_checking:
            pl_module.log_dict(builder.get_metrics(), on_epoch=True, sync_dist=True, add_dataloader_idx=True)


class _FusedTopItems:
    """The prediction callbacks' batch step with ``fused_top_k``."""

    def _init_fused(self, postprocessors, options: HeadOptions | None) -> None:
        self._seen_column = _seen_column(postprocessors)
        self._options = None if options is None else resolve_head_options(options)

    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        if getattr(pl_module, "candidates_to_score", None) is not None:
            raise ValueError("candidates_to_score: the fused ranking scores the whole catalog")
        super().on_predict_epoch_start(trainer, pl_module)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        top = _top_k_of_batch(pl_module, outputs, batch, self._top_k, self._options, self._seen_column)
        self._query_batches.append(batch[self.query_column])
        self._item_batches.append(top.indices)
        self._item_scores.append(top.values)


class FusedPandasTopItemsCallback(_FusedTopItems, PandasTopItemsCallback):
    """RePlay's ``PandasTopItemsCallback`` (one row per (query, item, score))
    from ``fused_top_k``; ``postprocessors`` at most one ``SeenItemsFilter``."""

    def __init__(self, top_k: int, query_column: str, item_column: str, rating_column: str = "rating",
                 postprocessors=None, options: HeadOptions | None = None) -> None:
        super().__init__(top_k=top_k, query_column=query_column, item_column=item_column,
                         rating_column=rating_column, postprocessors=None)
        self._init_fused(postprocessors, options)


class FusedTorchTopItemsCallback(_FusedTopItems, TorchTopItemsCallback):
    """RePlay's ``TorchTopItemsCallback`` ((query ids, (B, k) items, (B, k)
    scores)) from ``fused_top_k``."""

    def __init__(self, top_k: int, query_column: str, postprocessors=None,
                 options: HeadOptions | None = None) -> None:
        super().__init__(top_k=top_k, query_column=query_column, postprocessors=None)
        self._init_fused(postprocessors, options)
