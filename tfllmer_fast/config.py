"""One run's settings: data, item initialization and training, validated once.

``RunConfig`` is what ``tfllmer-fast train`` builds from its options, what the
run directory's ``config.json`` holds, and what ``--resume`` compares against.
Each numeric setting's allowed range is declared once, on its field
(``bounded``); ``validate`` and the command line's option checks both read it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .limits import bounded, validate_fields
from .train import TrainConfig

# Settings a resumed run may change: they extend or move the run without
# changing what has been trained so far.
RESUMABLE = frozenset({"train.epochs", "train.patience", "train.device", "train.eval_batch_size"})


@dataclass
class DataConfig:
    """Where the interactions come from and how they are split."""

    path: str | None = None  # None: data handed over in memory (the demo, tests)
    split: str = bounded("loo", choices=("loo", "time"))
    k_core: int = bounded(0, 0)


@dataclass
class ItemInitConfig:
    """How the item table starts: random, PCA or Rec-PCA of item features."""

    init: str = bounded("random", choices=("random", "pca", "recpca"))
    features: str | None = None
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
        if self.items.init != "random" and self.items.features is None and self.data.path is not None:
            raise ValueError(f"init {self.items.init!r} needs item features (features)")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> RunConfig:
        return cls(DataConfig(**values["data"]), ItemInitConfig(**values["items"]), TrainConfig(**values["train"]))

    def save(self, directory) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "config.json").write_text(json.dumps(self.to_dict(), indent=2))

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
