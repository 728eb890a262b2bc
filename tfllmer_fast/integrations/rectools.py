"""RecTools (``rectools[torch]`` 0.19): the fused head inside SASRec / BERT4Rec.

RecTools' transformer models train through a Lightning module chosen by
``lightning_module_type=``; a loss name it does not know goes to the module's
``_calc_custom_loss``. ``FusedLightningModule`` is that hook: with
``loss="fused_softmax"`` its training and validation losses are
``normalized_softmax_ce`` over the whole item table (the padding and the
extra tokens included, as RecTools' ``"softmax"`` has them), and it
recommends through ``topk_scores`` with the viewed items as exclusions, so
neither step builds the (B, L, N) logits. Two ready models::

    from tfllmer_fast.integrations.rectools import FusedSASRecModel
    model = FusedSASRecModel(n_factors=64, epochs=5)                  # == loss="softmax"
    model = FusedSASRecModel(head_options=HeadOptions(), epochs=5)    # the TF-LLMER head
    model.fit(dataset); model.recommend(users, dataset, k=10, filter_viewed=True)

or, on any RecTools transformer model: ``lightning_module_type=FusedLightningModule,
loss="fused_softmax", lightning_module_kwargs={"head_options": HeadOptions()}``.

The default ``PLAIN_CE`` head is RecTools' own ``"softmax"`` loss (same value,
same gradients) and its own dot-product ranking. RecTools' ``logits_t``
divides the logits as ``temperature`` does (the two multiply). With
``similarity_module_kwargs={"distance": "cosine"}`` RecTools normalizes both
towers itself (eps 1e-8); the fused head then does the same, whatever the
options' normalization flags say.
"""

from __future__ import annotations

import typing as tp
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..ops.normalized_ce import normalized_softmax_ce
from ..ops.ranking import topk_scores
from ..options import HeadOptions
from ._common import PLAIN_CE, exclusions_from_scipy_csr, read_s3rec, require

INSTALL = 'pip install "rectools[torch]==0.19.0" "numpy<2" "attrs<24" "pandas<3"'

_lightning = require("rectools.models.nn.transformers.lightning", INSTALL)
_similarity = require("rectools.models.nn.transformers.similarity", INSTALL)
_backbone = require("rectools.models.nn.transformers.torch_backbone", INSTALL)
_sasrec = require("rectools.models.nn.transformers.sasrec", INSTALL)
_bert4rec = require("rectools.models.nn.transformers.bert4rec", INSTALL)
Distance = require("rectools.models.rank", INSTALL).Distance
Columns = require("rectools", INSTALL).Columns

FUSED_LOSS = "fused_softmax"
"""The ``loss=`` name that routes a ``FusedLightningModule`` to the fused head."""

__all__ = [
    "FUSED_LOSS",
    "FusedBERT4RecModel",
    "FusedLightningModule",
    "FusedSASRecModel",
    "fused_softmax_loss",
    "head_options_from",
    "rank_u2i",
    "s3rec_interactions",
]


def head_options_from(value: tp.Any, name: str = "head_options") -> HeadOptions:
    """Validated ``HeadOptions`` from ``None`` (``PLAIN_CE``), a ``HeadOptions``, a
    mapping of its fields or the sequence of its values (what a RecTools config
    saved as JSON gives back)."""
    if value is None:
        return PLAIN_CE
    try:
        if isinstance(value, HeadOptions):
            return HeadOptions.make(*value)
        if isinstance(value, Mapping):
            return HeadOptions.make(**value)
        if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
            return HeadOptions.make(*value)
    except TypeError as err:
        raise TypeError(f"{name} must hold HeadOptions fields {HeadOptions._fields}: {err}") from err
    raise TypeError(f"{name} must be a HeadOptions (or a dict of its fields), got {type(value).__name__}")


def s3rec_interactions(path) -> pd.DataFrame:
    """An S3-Rec file (``user item item ...`` per line, in time order) as the
    interactions frame ``rectools.dataset.Dataset.construct`` takes: columns
    ``Columns.User``, ``Columns.Item``, ``Columns.Weight`` (1.0) and
    ``Columns.Datetime`` (the position in the line, as seconds)."""
    users, items, positions = read_s3rec(path)
    return pd.DataFrame({Columns.User: users, Columns.Item: items, Columns.Weight: 1.0,
                         Columns.Datetime: pd.to_datetime(positions, unit="s")})


def fused_softmax_loss(hidden: Tensor, item_embs: Tensor, y: Tensor, w: Tensor, *,
                       options: HeadOptions = PLAIN_CE) -> Tensor:
    """RecTools' ``"softmax"`` loss without the logits: a scalar fp32 tensor.

    ``hidden`` (B, L, d) the encoded sessions, ``item_embs`` (N, d) the whole
    item table (padding row 0 and the extra tokens included), ``y`` (B, L)
    int64 targets with 0 for padding, ``w`` (B, L) the interaction weights.
    The sum of ``w * CE`` over rows with ``y != 0``, divided by the number of
    such rows with ``w > 0``. Plain torch equivalent (RecTools' own)::

        logits = h' @ e'.T / temperature          # (B, L, N), h', e' as options say
        TransformerLightningModule._calc_softmax_loss(logits, y, w)

    RecTools counts the rows whose weighted loss is positive; that is the same
    count unless a row's loss rounds to exactly 0.
    """
    if y.shape != hidden.shape[:-1]:
        raise ValueError(f"y has shape {tuple(y.shape)}, expected the sessions' {tuple(hidden.shape[:-1])}")
    if w.shape != y.shape:
        raise ValueError(f"w has shape {tuple(w.shape)}, expected y's {tuple(y.shape)}")
    w = w.to(torch.float32)
    total = normalized_softmax_ce(hidden, item_embs, y, options=options, ignore_index=0, reduction="sum",
                                  row_weight=w)
    return total / ((y != 0) & (w > 0)).sum().to(total.dtype)


def rank_u2i(user_embs: Tensor, item_embs: Tensor, user_ids: np.ndarray, k: int, *,
             options: HeadOptions = PLAIN_CE, sorted_item_ids_to_recommend: np.ndarray | None = None,
             ui_csr_for_filter=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RecTools' ``TorchRanker.rank`` for one batch of users through ``topk_scores``.

    ``user_embs`` (B, d), ``item_embs`` (N, d) on the device to rank on,
    ``user_ids`` (B,) the ids to report, ``sorted_item_ids_to_recommend`` the
    whitelist (all items when ``None``), ``ui_csr_for_filter`` a SciPy (B, N)
    matrix of items to leave out. Returns ``(user ids, item ids, scores)``,
    flat, each user's best ``min(k, len(whitelist))`` first, filtered items
    dropped (a user may get fewer), as ``TorchRanker`` gives them. Plain torch
    equivalent::

        s = h' @ e'[whitelist].T; s[filter[:, whitelist] != 0] = -inf; torch.topk(s, k)
    """
    user_ids = np.asarray(user_ids)
    if user_embs.dim() != 2 or user_embs.shape[0] != len(user_ids):
        raise ValueError(f"user_embs must be (len(user_ids) = {len(user_ids)}, d), got {tuple(user_embs.shape)}")
    device = item_embs.device
    whitelist = sorted_item_ids_to_recommend
    candidates = item_embs
    if whitelist is not None:
        whitelist = np.asarray(whitelist, dtype=np.int64)
        if whitelist.size and (whitelist.min() < 0 or whitelist.max() >= item_embs.shape[0]):
            raise ValueError(f"sorted_item_ids_to_recommend must lie in [0, {item_embs.shape[0]})")
        candidates = item_embs[torch.from_numpy(whitelist).to(device)]
    exclude = None
    if ui_csr_for_filter is not None:
        if ui_csr_for_filter.shape[0] != len(user_ids):
            raise ValueError(f"ui_csr_for_filter must have len(user_ids) = {len(user_ids)} rows, "
                             f"got {ui_csr_for_filter.shape[0]}")
        matrix = ui_csr_for_filter.tocsr()
        # Column slicing renumbers the seen items to their whitelist positions.
        matrix = matrix[:, whitelist] if whitelist is not None else matrix.copy()
        matrix.eliminate_zeros()
        exclude = exclusions_from_scipy_csr(matrix, device=device)
    if len(user_ids) == 0 or candidates.shape[0] == 0:
        empty = np.array([], dtype=np.int64)
        return user_ids[:0], empty, np.array([], dtype=np.float32)
    top = topk_scores(user_embs.to(device=device, dtype=candidates.dtype), candidates,
                      min(int(k), candidates.shape[0]), options=options, exclude=exclude)
    indices = top.indices.cpu().numpy()
    scores = top.values.float().cpu().numpy()
    keep = indices >= 0  # -1 pads a user with fewer unfiltered candidates than k
    rows = np.broadcast_to(np.arange(len(user_ids))[:, None], indices.shape)[keep]
    items = indices[keep] if whitelist is None else whitelist[indices[keep]]
    return user_ids[rows], items, scores[keep]


class FusedLightningModule(_lightning.TransformerLightningModule):
    """RecTools' ``TransformerLightningModule`` with the fused head.

    ``loss="fused_softmax"`` trains and validates with ``fused_softmax_loss``
    over ``torch_model.item_model.get_all_embeddings()``; any other loss name
    is RecTools' own. Recommending to users always goes through ``rank_u2i``
    (``topk_scores``, seen items excluded inside the op). ``head_options``: a
    ``HeadOptions`` (default ``PLAIN_CE``, RecTools' own logits), used for the
    loss and, without its temperature, for the ranking scores (so that the
    reported scores are RecTools' similarities). Needs the stock
    ``TransformerTorchBackbone`` / ``DistanceSimilarityModule`` logits.
    """

    def __init__(self, *args: tp.Any, head_options: tp.Any = None, **kwargs: tp.Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_options = head_options_from(head_options)

    @staticmethod
    def requires_negatives(loss: str) -> tp.Optional[bool]:
        if loss == FUSED_LOSS:
            return False
        return _lightning.TransformerLightningModule.requires_negatives(loss)

    def loss_options(self) -> HeadOptions:
        """The head of the loss: ``head_options`` with RecTools' ``logits_t``
        and cosine distance folded in."""
        head = self.head_options
        head = head._replace(temperature=head.temperature * float(self.logits_t))
        if self._distance() == Distance.COSINE:
            eps = float(_similarity.DistanceSimilarityModule.epsilon_cosine_dist.item())
            head = head._replace(normalize_items=True, normalize_hidden=True, eps=eps)
        return HeadOptions.make(*head)

    def rank_options(self) -> HeadOptions:
        """The head of the ranking: the loss head at temperature 1 (the order is the same)."""
        return self.loss_options()._replace(temperature=1.0)

    def _distance(self) -> tp.Any:
        backbone, sim = self.torch_model, self.torch_model.similarity_module
        if not isinstance(backbone, _backbone.TransformerTorchBackbone) or (
                type(backbone).forward is not _backbone.TransformerTorchBackbone.forward):
            raise TypeError(f"FusedLightningModule needs backbone_type=TransformerTorchBackbone (its logits are "
                            f"similarity_module(encode_sessions(...))), got {type(backbone).__name__}")
        stock = _similarity.DistanceSimilarityModule
        if not isinstance(sim, stock) or type(sim).forward is not stock.forward or (
                type(sim)._get_full_catalog_logits is not stock._get_full_catalog_logits):
            raise TypeError(f"FusedLightningModule needs similarity_module_type=DistanceSimilarityModule "
                            f"(dot or cosine logits), got {type(sim).__name__}")
        return sim.distance

    def session_and_item_embeddings(self, batch: tp.Dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(hidden (B, L, d), item_embs (N, d))``: what ``torch_model(batch)``
        multiplies into its logits."""
        self._distance()
        item_embs = self.torch_model.item_model.get_all_embeddings()
        return self.torch_model.encode_sessions(batch, item_embs), item_embs

    def fused_loss(self, batch: tp.Dict[str, Tensor], last_only: bool = False) -> Tensor:
        """The fused ``"softmax"`` loss of a batch; ``last_only`` scores the
        last position only, as RecTools' validation step does."""
        hidden, item_embs = self.session_and_item_embeddings(batch)
        if last_only:
            hidden = hidden[:, -1:, :]
        return fused_softmax_loss(hidden, item_embs, batch["y"], batch["yw"], options=self.loss_options())

    def _calc_custom_loss(self, batch: tp.Dict[str, Tensor], batch_idx: int) -> Tensor:
        if self.loss != FUSED_LOSS:
            return super()._calc_custom_loss(batch, batch_idx)
        return self.fused_loss(batch)

    def _calc_custom_loss_outputs(self, batch: tp.Dict[str, Tensor], batch_idx: int) -> tp.Dict[str, Tensor]:
        # RecTools returns the last position's (B, N) logits beside the loss;
        # the fused head has none to give.
        if self.loss != FUSED_LOSS:
            return super()._calc_custom_loss_outputs(batch, batch_idx)
        return {"loss": self.fused_loss(batch, last_only=True)}

    def _recommend_u2i(self, user_ids: np.ndarray, recommend_dataloader: tp.Any,
                       sorted_item_ids_to_recommend: np.ndarray, k: int, dataset: tp.Any, filter_viewed: bool,
                       torch_device: tp.Optional[str], *args: tp.Any, **kwargs: tp.Any) -> tuple:
        options = self.rank_options()
        ui_csr = None
        if filter_viewed:
            ui_csr = dataset.get_user_item_matrix(include_weights=False, include_warm_items=True)[user_ids]
        user_embs, item_embs = self._get_user_item_embeddings(recommend_dataloader, torch_device)
        return rank_u2i(user_embs[user_ids], item_embs, user_ids, k, options=options,
                        sorted_item_ids_to_recommend=sorted_item_ids_to_recommend, ui_csr_for_filter=ui_csr)


def _fused_defaults(kwargs: dict, head_options: tp.Any) -> dict:
    kwargs.setdefault("loss", FUSED_LOSS)
    kwargs.setdefault("lightning_module_type", FusedLightningModule)
    module_kwargs = dict(kwargs.get("lightning_module_kwargs") or {})
    if head_options is not None:
        if "head_options" in module_kwargs:
            raise TypeError("pass head_options either directly or in lightning_module_kwargs, not both")
        module_kwargs["head_options"] = head_options_from(head_options)
    elif "head_options" in module_kwargs:
        module_kwargs["head_options"] = head_options_from(module_kwargs["head_options"],
                                                          "lightning_module_kwargs['head_options']")
    kwargs["lightning_module_kwargs"] = module_kwargs or None
    return kwargs


class FusedSASRecModel(_sasrec.SASRecModel):
    """``SASRecModel`` trained and ranked by ``FusedLightningModule``
    (``loss="fused_softmax"``); ``head_options`` as there, every other
    argument RecTools'. Its config round-trips (the options travel in
    ``lightning_module_kwargs``)."""

    def __init__(self, head_options: tp.Any = None, **kwargs: tp.Any) -> None:
        super().__init__(**_fused_defaults(kwargs, head_options))


class FusedBERT4RecModel(_bert4rec.BERT4RecModel):
    """``BERT4RecModel`` trained and ranked by ``FusedLightningModule``, as
    ``FusedSASRecModel``."""

    def __init__(self, head_options: tp.Any = None, **kwargs: tp.Any) -> None:
        super().__init__(**_fused_defaults(kwargs, head_options))
