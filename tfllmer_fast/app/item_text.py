"""Item texts from an item table: a RecBole ``.item`` file, a CSV / TSV file
with a header, or JSON lines; one text per item from a template over the
columns (``"{movie_title} ({release_year}). Genres: {class}"``), or every
column but the id joined by ". " when no template is given."""

from __future__ import annotations

import csv
import json
import string
from pathlib import Path
from typing import NamedTuple

TABLE_SUFFIXES = (".item", ".csv", ".tsv", ".jsonl")


class ItemTable(NamedTuple):
    """``ids[i]`` (a string, as the interaction files spell it) and its ``rows[i]`` (column -> text)."""

    ids: list
    rows: list
    columns: list


def is_item_table(path) -> bool:
    return Path(path).suffix in TABLE_SUFFIXES


def read_item_table(path, id_column: str | None = None) -> ItemTable:
    """The table's rows keyed by item id. RecBole headers ``name:type`` are read
    as ``name``; the id column is ``id_column``, else ``item_id``, else the first."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--items: no such file: {path}")
    if path.suffix == ".jsonl":
        rows = []
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append({k: "" if v is None else str(v) for k, v in json.loads(line).items()})
                except (json.JSONDecodeError, AttributeError) as exc:
                    raise ValueError(f"{path}:{lineno}: not a JSON object ({exc})") from None
        columns = list(rows[0]) if rows else []
    else:
        delimiter = "," if path.suffix == ".csv" else "\t"
        with open(path, newline="") as f:
            reader = csv.reader(f, delimiter=delimiter)
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{path}: empty file")
            columns = [h.split(":")[0] for h in header]
            rows = []
            for lineno, fields in enumerate(reader, 2):
                if not fields:
                    continue
                if len(fields) != len(columns):
                    raise ValueError(f"{path}:{lineno}: expected {len(columns)} fields, got {len(fields)}")
                rows.append(dict(zip(columns, fields)))
    if not rows:
        raise ValueError(f"{path}: no items")
    id_column = id_column or ("item_id" if "item_id" in columns else columns[0])
    if id_column not in columns:
        raise ValueError(f"--id-column: {path} has no column {id_column!r} (columns: {', '.join(columns)})")
    ids = [row[id_column] for row in rows]
    seen = set()
    for item in ids:
        if item in seen:
            raise ValueError(f"{path}: item id {item!r} appears twice")
        seen.add(item)
    return ItemTable(ids, rows, [c for c in columns if c != id_column])


def render_texts(table: ItemTable, template: str | None = None) -> list:
    """One text per item: ``template.format(**row)``, or the columns joined."""
    if template is None:
        return [". ".join(row[c] for c in table.columns if row.get(c)) for row in table.rows]
    fields = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    unknown = sorted(fields - set(table.columns))
    if unknown:
        raise ValueError(f"--template names column(s) {', '.join(unknown)} that the item table does not have "
                         f"(columns: {', '.join(table.columns)})")
    return [template.format(**row) for row in table.rows]


def multi_hot(table: ItemTable, column: str):
    """(items, tokens) float32 multi-hot rows of a space-separated token column
    (RecBole ``token_seq``, the genres of ML-100k), tokens in sorted order."""
    import numpy as np

    if column not in table.columns:
        raise ValueError(f"--multi-hot: the item table has no column {column!r} (columns: {', '.join(table.columns)})")
    tokens = [row[column].split() for row in table.rows]
    vocab = {t: j for j, t in enumerate(sorted({t for row in tokens for t in row}))}
    matrix = np.zeros((len(tokens), len(vocab)), dtype=np.float32)
    for i, row in enumerate(tokens):
        matrix[i, [vocab[t] for t in row]] = 1.0
    return matrix
