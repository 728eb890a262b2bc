"""Tensor arguments in any layout, inside guard buffers.

``place`` copies a tensor's values into a strided view of a larger buffer
(transposed, padded rows, every other column, a storage offset) whose other
elements are canaries: NaN for floats, a valid but wrong id for integers. A
kernel that reads past its argument then computes with NaN or a wrong id, and
the comparison with the reference fails instead of the process crashing;
``Placed.untouched`` says whether anything wrote into the canaries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MATRIX_LAYOUTS = ("contiguous", "transposed", "padded_rows", "every_other_column")
VECTOR_LAYOUTS = ("contiguous", "every_other", "every_third")


@dataclass
class Placed:
    view: torch.Tensor
    buffer: torch.Tensor
    inside: torch.Tensor  # bool over the buffer: the view's elements
    canary: float | int

    def untouched(self) -> bool:
        rest = self.buffer[~self.inside]
        if self.buffer.dtype.is_floating_point and self.canary != self.canary:
            return bool(rest.isnan().all())
        return bool((rest == self.canary).all())


def _strides(shape, layout: str) -> tuple[tuple[int, ...], int]:
    """(strides, span) of ``layout`` for ``shape``: span elements hold the view."""
    if len(shape) == 1:
        step = {"contiguous": 1, "every_other": 2, "every_third": 3}[layout]
        return (step,), max((shape[0] - 1) * step + 1, 0)
    rows, cols = shape
    if layout == "contiguous":
        strides = (cols, 1)
    elif layout == "transposed":
        strides = (1, rows)
    elif layout == "padded_rows":
        strides = (cols + 5, 1)
    elif layout == "every_other_column":
        strides = (2 * cols + 1, 2)
    else:
        raise ValueError(layout)
    span = (rows - 1) * strides[0] + (cols - 1) * strides[1] + 1 if rows and cols else 0
    return strides, span


def place(values: torch.Tensor, layout: str = "contiguous", offset: int = 0, canary=None, guard: int = 9) -> Placed:
    """``values`` laid out as ``layout`` at storage ``offset`` inside a buffer
    with ``guard`` canaries on each side."""
    if canary is None:
        canary = float("nan") if values.dtype.is_floating_point else 0
    strides, span = _strides(tuple(values.shape), layout)
    size = guard + offset + span + guard
    buffer = torch.full((size,), canary, dtype=values.dtype, device=values.device)
    view = buffer.as_strided(tuple(values.shape), strides, guard + offset)
    view.copy_(values)
    marker = torch.zeros(size, dtype=torch.bool, device=values.device)
    marker.as_strided(tuple(values.shape), strides, guard + offset).fill_(True)
    return Placed(view, buffer, marker, canary)
