"""Run files that survive a crash: every write goes to a temporary file in the
same directory, is flushed to disk, then renamed over the old one (a rename
within a directory is atomic), so a kill at any moment leaves either the old
file or the new one, never a torn one; ``epochs.jsonl`` is read back without
its torn last line."""

from __future__ import annotations

import io
import json
import os
import pickle
import warnings
import zipfile
from pathlib import Path

import torch


class DamagedFileError(ValueError):
    """A run file that cannot be read; the message names it and what to do."""


def per_rank(name: str, rank: int, world: int) -> str:
    """A run file's name for one process of ``world`` (each holds its own shard of the table)."""
    if world == 1:
        return name
    stem, suffix = name.rsplit(".", 1)
    return f"{stem}.rank{rank}-of-{world}.{suffix}"


def _replace_with(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text(path, text: str) -> None:
    _replace_with(Path(path), text.encode())


def write_bytes(path, data: bytes) -> None:
    _replace_with(Path(path), data)


def save_tensors(obj, path) -> None:
    """``torch.save`` of plain tensors, numbers, strings, lists and dicts, atomically."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    _replace_with(Path(path), buffer.getvalue())


def load_tensors(path, map_location=None):
    """``torch.load(weights_only=True)``: no pickled code of someone else's runs;
    a damaged or foreign file is a ``DamagedFileError`` naming it."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, KeyError,
            AttributeError, TypeError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        text = str(exc).strip()
        reason = text.splitlines()[0].split(". ")[0][:160] if text else type(exc).__name__
        raise DamagedFileError(f"{path}: damaged, or not written by this version ({reason}); delete it "
                               "(and --resume from nothing) or train into a new --out") from None


def append_json_line(path, row: dict) -> None:
    """One JSON line appended and flushed to disk: a crash leaves at most a torn last line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_json_lines(path, rows: list[dict]) -> None:
    write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def read_json_lines(path) -> list[dict]:
    """The rows of a JSON-lines file; a torn last line (a crash mid-append) is
    dropped with a warning, a bad line elsewhere is a ``DamagedFileError``."""
    lines = Path(path).read_text().splitlines()
    rows = []
    for lineno, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if lineno == len(lines):
                warnings.warn(f"{path}:{lineno}: dropped a torn last line (a run stopped while writing it)",
                              stacklevel=2)
                break
            raise DamagedFileError(f"{path}:{lineno}: not JSON ({exc.msg})") from None
    return rows
