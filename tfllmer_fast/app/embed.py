"""Item embeddings from item text (``tfllmer-fast embed``): a sentence-transformers
model, or a Hugging Face ``transformers`` encoder or decoder with a pooling
(mean, the first token, or the last token after an instruction prompt, as
decoder embedding models such as Qwen3-Embedding are used), kept raw by
default: the spread of the pooled vectors' norms is what the head's
normalization and Rec-PCA act on.

The output ``emb.npy`` (items, D) float32 comes with ``emb.json``, its
manifest: the model, pooling, prompt, template, dims, a hash of the texts and
the item ids in row order, so a training run lines the rows up with its own
item ids after its id mapping and k-core filter (``load_aligned``). Texts are
encoded in chunks saved as they finish (``emb.parts/``): a stopped run
resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import files
from .item_text import multi_hot, read_item_table, render_texts
from .limits import bounded, validate_fields

POOLINGS = ("mean", "cls", "last")
BACKENDS = ("auto", "sentence-transformers", "transformers")
DTYPES = ("auto", "fp32", "bf16", "fp16")


@dataclass
class EmbedConfig:
    """How item texts become vectors. ``pooling`` None is the model's own
    (sentence-transformers) or ``mean`` (transformers); ``prompt`` is put
    before every text (an instruction for decoder embedding models);
    ``dtype`` auto is bf16 on CUDA and fp32 on CPU."""

    model: str = ""
    backend: str = bounded("auto", choices=BACKENDS)
    pooling: str | None = bounded(None, choices=(None, *POOLINGS))
    prompt: str = ""
    normalize: bool = False
    template: str | None = None
    id_column: str | None = None
    batch_size: int = bounded(64, 1)
    max_length: int = bounded(256, 1)
    chunk_items: int = bounded(1024, 1)
    device: str = "cpu"
    dtype: str = bounded("auto", choices=DTYPES)

    def validate(self) -> EmbedConfig:
        validate_fields(self)
        if not self.model:
            raise ValueError("model: a sentence-transformers or transformers model directory or name is needed")
        if self.resolved_backend() == "sentence-transformers" and self.pooling is not None:
            raise ValueError("pooling: a sentence-transformers model pools as its own modules say; pass "
                             "--backend transformers to choose the pooling")
        return self

    def resolved_backend(self) -> str:
        if self.backend != "auto":
            return self.backend
        local = Path(self.model)
        if local.is_dir():
            return "sentence-transformers" if (local / "modules.json").exists() else "transformers"
        return "sentence-transformers" if self.model.startswith("sentence-transformers/") else "transformers"

    def torch_dtype(self):
        import torch

        if self.dtype == "auto":
            return torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.dtype]


class SentenceTransformerEncoder:
    """``SentenceTransformer(model).encode`` (it sorts each call's texts by length itself)."""

    def __init__(self, config: EmbedConfig):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise RuntimeError("the sentence-transformers backend needs sentence-transformers: "
                               "pip install tfllmer_fast[text]") from None
        self.config = config
        self.model = SentenceTransformer(config.model, device=config.device)
        if config.torch_dtype() != self.model.dtype:
            self.model.to(config.torch_dtype())
        self.model.max_seq_length = min(self.model.max_seq_length or config.max_length, config.max_length)

    def __call__(self, texts: list) -> np.ndarray:
        out = self.model.encode([self.config.prompt + t for t in texts], batch_size=self.config.batch_size,
                                convert_to_numpy=False, convert_to_tensor=True, show_progress_bar=False)
        return out.float().cpu().numpy()


class TransformersEncoder:
    """``AutoModel`` hidden states pooled over each text's tokens (padding on
    the tokenizer's side, left or right), batches sorted by length."""

    def __init__(self, config: EmbedConfig):
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError:
            raise RuntimeError("the transformers backend needs transformers: pip install tfllmer_fast[text]") from None
        self.config = config
        self.pooling = config.pooling or "mean"
        self.tokenizer = AutoTokenizer.from_pretrained(config.model)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        try:
            model = AutoModel.from_pretrained(config.model, dtype=config.torch_dtype())
        except TypeError:  # transformers before 4.56 names it torch_dtype
            model = AutoModel.from_pretrained(config.model, torch_dtype=config.torch_dtype())
        self.model = model.to(config.device).eval()

    def __call__(self, texts: list) -> np.ndarray:
        return encode_with(self.model, self.tokenizer, texts, pooling=self.pooling, prompt=self.config.prompt,
                           batch_size=self.config.batch_size, max_length=self.config.max_length)


def encode_with(model, tokenizer, texts: list, *, pooling: str, prompt: str = "", batch_size: int = 64,
                max_length: int = 256) -> np.ndarray:
    """(len(texts), D) float32: ``model``'s last hidden states pooled per text.
    Texts go in batches of similar length (less padding); the rows come back
    in the order given."""
    import torch

    prompted = [prompt + t for t in texts]
    order = np.argsort([len(t) for t in prompted], kind="stable")
    out = None
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        enc = tokenizer([prompted[i] for i in batch], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt").to(device)
        with torch.no_grad():
            hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        pooled = pool(hidden, enc["attention_mask"], pooling).float().cpu().numpy()
        if out is None:
            out = np.empty((len(texts), pooled.shape[1]), dtype=np.float32)
        out[batch] = pooled
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def pool(hidden, mask, pooling: str):
    """(B, D) from hidden (B, L, D) and the attention mask (B, L): the masked
    mean, the first token (``cls``), or each text's last real token (``last``,
    wherever the padding sits)."""
    import torch

    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        m = mask[..., None].to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1)
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = (mask.long() * positions).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def make_encoder(config: EmbedConfig):
    if config.resolved_backend() == "sentence-transformers":
        return SentenceTransformerEncoder(config)
    return TransformersEncoder(config)


def manifest_path(npy) -> Path:
    return Path(npy).with_suffix(".json")


def _texts_hash(ids: list, texts: list) -> str:
    return hashlib.sha256(json.dumps([ids, texts]).encode()).hexdigest()


def _save_npy(path: Path, matrix: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, matrix)
    files.write_bytes(path, buffer.getvalue())


def embed_items(items, config: EmbedConfig, out, *, encoder=None, multi_hot_column: str | None = None) -> dict:
    """Encode the item table ``items`` into ``out`` (.npy) and its manifest;
    returns the manifest. ``encoder`` (texts -> array) replaces the model
    (tests); ``multi_hot_column`` writes that token column's multi-hot rows
    instead of text embeddings."""
    out = Path(out)
    if out.suffix != ".npy":
        raise ValueError(f"--out: the embeddings are written as .npy, got {out}")
    table = read_item_table(items, config.id_column)
    if multi_hot_column is not None:
        matrix = multi_hot(table, multi_hot_column)
        manifest = {"model": f"multi-hot:{multi_hot_column}", "texts_sha256": _texts_hash(table.ids, [])}
    else:
        config.validate()
        texts = render_texts(table, config.template)
        digest = _texts_hash(table.ids, texts)
        settings = {k: v for k, v in asdict(config).items() if k not in ("device", "batch_size", "chunk_items")}
        matrix = _encode_in_chunks(texts, settings, digest, config, out, encoder)
        if config.normalize:
            norms = np.linalg.norm(matrix, axis=1, keepdims=True)
            matrix = matrix / np.maximum(norms, 1e-12)
        manifest = {**settings, "backend": config.resolved_backend(), "texts_sha256": digest,
                    "example_text": texts[0]}
    manifest.update(items=str(items), count=int(matrix.shape[0]), dims=int(matrix.shape[1]),
                    item_ids=list(table.ids))
    _save_npy(out, matrix.astype(np.float32, copy=False))
    files.write_text(manifest_path(out), json.dumps(manifest, indent=1))
    shutil.rmtree(out.with_suffix(".parts"), ignore_errors=True)
    return manifest


def _encode_in_chunks(texts, settings, digest, config, out: Path, encoder) -> np.ndarray:
    """Chunks of ``config.chunk_items`` texts, each saved when done; chunks a
    stopped run already saved for the same texts and settings are reused."""
    from tqdm.auto import tqdm

    parts = out.with_suffix(".parts")
    # The chunking is part of the key: a chunk file is named by where it starts.
    key = hashlib.sha256(json.dumps([settings, digest, config.chunk_items]).encode()).hexdigest()
    stamp = parts / "key.txt"
    if parts.exists() and (not stamp.exists() or stamp.read_text() != key):
        shutil.rmtree(parts)  # chunks of other texts or settings: start over
    parts.mkdir(parents=True, exist_ok=True)
    files.write_text(stamp, key)
    starts = range(0, len(texts), config.chunk_items)
    chunks = []
    for start in tqdm(starts, desc="embedding item texts", unit="chunk", disable=len(starts) < 2):
        path = parts / f"chunk-{start:09d}.npy"
        if path.exists():
            chunks.append(np.load(path))
            continue
        if encoder is None:
            encoder = make_encoder(config)
        chunk = np.asarray(encoder(texts[start : start + config.chunk_items]), dtype=np.float32)
        _save_npy(path, chunk)
        chunks.append(chunk)
    return np.concatenate(chunks)


def load_aligned(npy, item_ids, num_items: int, *, missing: str = "error") -> np.ndarray:
    """(num_items + 1, D) float32 rows of ``npy`` in the training data's item
    order: row i is the embedding of the item whose original id is
    ``item_ids[i]`` (row 0, padding, zeros). An item without a row is an
    error naming it, unless ``missing="zero"``."""
    npy = Path(npy)
    manifest_file = manifest_path(npy)
    if not manifest_file.exists():
        raise FileNotFoundError(f"{npy}: no manifest {manifest_file} beside it (tfllmer-fast embed writes one)")
    try:
        manifest = json.loads(manifest_file.read_text())
        row_of = {str(item): row for row, item in enumerate(manifest["item_ids"])}
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise files.DamagedFileError(f"{manifest_file}: not an embedding manifest ({exc})") from None
    matrix = np.load(npy)
    if matrix.ndim != 2 or matrix.shape[0] != len(row_of):
        raise ValueError(f"{npy}: {matrix.shape} rows do not match the {len(row_of)} item ids of {manifest_file}")
    if item_ids is None:
        item_ids = [None] + [str(i) for i in range(1, num_items + 1)]
    out = np.zeros((num_items + 1, matrix.shape[1]), dtype=np.float32)
    absent = []
    for new in range(1, num_items + 1):
        row = row_of.get(str(item_ids[new]))
        if row is None:
            absent.append(str(item_ids[new]))
        else:
            out[new] = matrix[row]
    if absent and missing != "zero":
        raise ValueError(f"{npy}: no embedding for item {absent[0]!r} ({len(absent)} of the data's {num_items} "
                         "items have none): embed an item table that lists every item")
    if not np.isfinite(out).all():
        raise ValueError(f"{npy} contains NaN or Inf")
    return out
