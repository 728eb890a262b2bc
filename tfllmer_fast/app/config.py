"""Every setting of a run, validated once: data, item initialization, the
sequential training (``TrainConfig``), the CF training (``CFConfig``), and
the parts they share (SAM, the head/tail split).

``RunConfig`` is what ``tfllmer-fast train`` builds from its options, what the
run directory's ``config.json`` holds, and what ``--resume`` compares against;
``CFConfig`` is ``tfllmer-fast train-cf``'s. Each numeric setting's allowed
range is declared once, on its field (``bounded``); ``validate`` and the
command line's option checks both read it. The trainers read these objects
and check nothing again.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import files
from .. import DEFAULT_TEMPERATURE, HeadOptions
from ..ops import IMPLS
from .limits import bounded, validate_fields

SAM_MODES = ("off", "sam", "itemwise")


@dataclass
class SAMSettings:
    """The sharpness-aware settings a training configuration carries (both the
    sequential ``TrainConfig`` and ``cf.CFConfig`` inherit them)."""

    sam: str = bounded("off", choices=SAM_MODES)  # off, plain SAM, or item-wise SAM
    sam_rho: float = bounded(0.05, 0.0)  # the perturbation's length
    sam_exponent: float = bounded(0.5, 0.0)  # item-wise weights (training count + 1) ** -exponent


@dataclass
class LongTailSettings:
    """The head/tail split a training configuration carries."""

    head_share: float = bounded(0.8, 0.0, 1.0)  # training interactions the head items hold


# A random item table learns at this multiple of the backbone's rate
# (docs/defaults.md has the measurements behind it).
RANDOM_TABLE_LR_SCALE = 8.0


@dataclass
class TrainConfig(SAMSettings, LongTailSettings):
    """Defaults follow the literature: hidden 64, max length 50, 2 blocks, batch
    256 (S3-Rec / RecBole settings); Adam lr 1e-3 for the backbone; up to 100
    epochs with patience 10 on validation NDCG@10.

    ``item_lr`` is the item table's own Adam rate; None (the default) learns
    a random table at ``RANDOM_TABLE_LR_SCALE`` x ``lr`` and fine-tunes one
    initialized from features at ``lr``. The normalized head sees only the
    direction of an item row, and Adam moves each coordinate by about the rate
    per step whatever the row's length, so a unit row at the backbone's 1e-3
    turns slowly and a random table loses its first epochs to it; a feature
    table starts where it should be and drifts off at the larger rate on
    dense data (docs/defaults.md).
    """

    model: str = bounded("sasrec", choices=("sasrec", "gru4rec", "bert4rec"))
    dim: int = bounded(64, 1)
    max_len: int = bounded(50, 2)
    batch_size: int = bounded(256, 1)
    lr: float = bounded(1e-3, 0.0)
    item_lr: float | None = bounded(None, 0.0)
    weight_decay: float = bounded(0.0, 0.0)
    epochs: int = bounded(100, 1)
    patience: int = bounded(10, 1)
    loss_on: str = bounded("all", choices=("all", "last"))
    normalize: bool = True
    temperature: float = bounded(DEFAULT_TEMPERATURE, 1e-6)
    freeze_items: bool = False
    seed: int = 42
    device: str = "cpu"
    amp: bool | None = None  # None: bf16 autocast on CUDA only
    eval_batch_size: int = bounded(2048, 1)
    exclude_history: bool = True
    impl: str = bounded("auto", choices=IMPLS)
    diagnostics_sample: int = bounded(256, 0)  # validation queries for per-epoch diagnostics; 0 turns them off
    diagnostics_m: int = bounded(16, 2)  # effective-set size: the target and its m - 1 hardest negatives
    model_options: dict = field(default_factory=dict)

    def validate(self) -> TrainConfig:
        validate_fields(self)
        return self

    @property
    def head_options(self) -> HeadOptions:
        """The head's scoring, one object from here to the kernels: item rows
        normalized unless ``normalize`` is off, logits over ``temperature``."""
        return HeadOptions.make(temperature=self.temperature, normalize_items=self.normalize)

    def table_lr(self, from_features: bool) -> float:
        """The item table's Adam rate: ``item_lr``, or its default for a table
        initialized at random or from features."""
        if self.item_lr is not None:
            return self.item_lr
        return self.lr if from_features else RANDOM_TABLE_LR_SCALE * self.lr


LOSSES = ("bpr", "directspec", "directspec+", "softmax")
# The balancing step when --alpha is not given. Plain DirectSpec's step is
# alpha / B times Hn Hn^T Hn, whose singular values are S^3 with S^2 about B / d
# in a balanced batch, so a small step barely moves anything short of
# collapse; DirectSpec+'s softmax rows sum to one. The best step depends on
# the data (docs/directspec.md has the sweeps behind these defaults).
DEFAULT_ALPHA = {"directspec": 2.0, "directspec+": 0.5}


@dataclass
class CFConfig(SAMSettings, LongTailSettings):
    """One CF run. ``loss``: BPR with one uniform negative per pair; the
    positive-only loss on DirectSpec / DirectSpec+ balanced batch vectors
    (``alpha``, by default ``DEFAULT_ALPHA`` of the loss; DirectSpec+'s
    temperatures ``tau_0`` for user or item pairs within ``max_distance`` on
    the training graph, ``tau_1`` otherwise;
    plain DirectSpec takes ``alpha / B`` for a batch of B, see ``_loss``); or
    the full softmax over all items through the fused head (normalized item
    rows, the user vector's norm as inverse temperature). Scores at
    evaluation are raw dot products, except for the softmax, which ranks as
    its head scores. Defaults: d = 64, LightGCN with 3 layers, and DirectSpec+
    at K = 2, tau_0 = 3.5, tau_1 = 4 (the paper's best on Yelp).
    docs/directspec.md lists where this differs from the authors' code (their
    optimizer, rescaling and Recall convention)."""

    model: str = bounded("mf", choices=("mf", "lightgcn"))
    loss: str = bounded("bpr", choices=LOSSES)
    dim: int = bounded(64, 1)
    layers: int = bounded(3, 1)
    batch_size: int = bounded(2048, 1)
    lr: float = bounded(1e-3, 0.0)
    weight_decay: float = bounded(0.0, 0.0)
    epochs: int = bounded(200, 1)
    patience: int = bounded(10, 1)
    eval_every: int = bounded(1, 1)  # validate every this many epochs (patience still counts epochs)
    alpha: float | None = bounded(None, 0.0)
    tau_0: float = bounded(3.5, 0.0)
    tau_1: float = bounded(4.0, 0.0)
    max_distance: int = bounded(2, 0)
    temperature: float = bounded(DEFAULT_TEMPERATURE, 1e-6)
    test_share: float = bounded(0.2, 0.0, 0.99)
    valid_share: float = bounded(0.1, 0.0, 0.99)
    seed: int = 0
    device: str = "cpu"
    eval_batch_size: int = bounded(2048, 1)

    def validate(self) -> CFConfig:
        validate_fields(self)
        if self.tau_0 > self.tau_1:
            raise ValueError(f"tau_0 must be <= tau_1, got {self.tau_0} > {self.tau_1}")
        if self.eval_every > self.patience:
            raise ValueError(f"eval_every ({self.eval_every}) must be <= patience ({self.patience}): early stopping "
                             "needs a validation within every patience window")
        if self.alpha is not None and self.loss not in DEFAULT_ALPHA:
            raise ValueError(f"alpha is the DirectSpec step and does not apply to loss {self.loss!r}")
        return self

    @property
    def balance_step(self) -> float | None:
        """The DirectSpec / DirectSpec+ step: ``alpha``, or the loss's default;
        None for the losses that take no step."""
        return self.alpha if self.alpha is not None else DEFAULT_ALPHA.get(self.loss)

    @property
    def scoring(self) -> HeadOptions:
        if self.loss == "softmax":
            return HeadOptions.make(temperature=self.temperature, normalize_items=True)
        return HeadOptions.make(normalize_items=False)


# Settings a resumed run may change: they extend or move the run without
# changing what has been trained so far.
RESUMABLE = frozenset({"train.epochs", "train.patience", "train.device", "train.eval_batch_size"})


@dataclass
class DataConfig:
    """Where the interactions come from and how they are split."""

    path: str | None = None  # None: data handed over in memory (the demo, tests)
    split: str = bounded("loo", choices=("loo", "time"))
    k_core: int = bounded(0, 0)
    min_rating: float | None = None  # RecBole .inter with ratings: keep those >= it (None: keep all)


INITS = ("random", "pca", "recpca")


def require_features(init: str, features) -> None:
    """The one rule: every initialization but random needs item features."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if init != "random" and features is None:
        raise ValueError(f"init {init!r} needs item features (--features)")


@dataclass
class ItemInitConfig:
    """How the item table starts: random, PCA or Rec-PCA of item features."""

    init: str = bounded("random", choices=INITS)
    features: str | None = None  # a matrix (.npy with its embed manifest, .pt), item2attributes.json, or an item table
    embed_model: str | None = None  # with an item table as features: embed its texts with this model first
    template: str | None = None  # the item table's text template (tfllmer-fast embed --template)
    beta: float = bounded(0.3, 0.0, 0.5)  # (I - beta L) stays positive semi-definite up to 0.5
    top_k: int = bounded(20, 1)


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    items: ItemInitConfig = field(default_factory=ItemInitConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> RunConfig:
        """Raise ValueError naming the first setting out of its range."""
        for section in ("data", "items", "train"):
            validate_fields(getattr(self, section))
        if self.data.path is not None:  # data handed over in memory brings its features along
            require_features(self.items.init, self.items.features)
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> RunConfig:
        return cls(DataConfig(**values["data"]), ItemInitConfig(**values["items"]), TrainConfig(**values["train"]))

    def save(self, directory) -> None:
        files.write_text(Path(directory) / "config.json", json.dumps(self.to_dict(), indent=2))

    def differences(self, other: RunConfig) -> list[str]:
        """'section.name: other -> self' for every setting that differs, other
        than those a resumed run may change."""
        mine, theirs = _flatten(self.to_dict()), _flatten(other.to_dict())
        return [f"{k}: {theirs.get(k)!r} -> {mine.get(k)!r}" for k in sorted(set(mine) | set(theirs))
                if k not in RESUMABLE and mine.get(k) != theirs.get(k)]


def load_saved(directory) -> RunConfig | None:
    path = Path(directory) / "config.json"
    if not path.exists():
        return None
    try:
        return RunConfig.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a run configuration written by this version ({exc})") from None


def _flatten(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict) and key != "model_options":
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out
