"""Argument checks shared by the public ops: each error names the argument."""

from __future__ import annotations

import os
import warnings

import torch

from ._kernels import kernels

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
IMPLS = ("auto", "triton", "torch_grad_in_forward", "torch")
"""``triton``: the fused kernels. ``torch_grad_in_forward``: plain torch over
row chunks that finishes the reduced loss's gradients in the forward (the
CPU path: nothing kept for the backward). ``torch``: the plain-torch
reference under autograd (a chunk of rows' logits at a time). ``auto``:
triton on CUDA where the kernels serve the width, a torch path otherwise."""
DEPRECATED_IMPLS = {"chunked": "torch_grad_in_forward"}


def canonical_impl(impl: str) -> str:
    """``impl`` under its current name (old names warn once per call site)."""
    if impl in DEPRECATED_IMPLS:
        warnings.warn(f"impl={impl!r} is now impl={DEPRECATED_IMPLS[impl]!r}; the old name goes in the next "
                      "release", DeprecationWarning, stacklevel=3)
        return DEPRECATED_IMPLS[impl]
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return impl


def ranking_impl(impl: str) -> str:
    """The ranking ops have no gradients: the gradient-in-forward path is the reference."""
    impl = canonical_impl(impl)
    return "torch" if impl == "torch_grad_in_forward" else impl


def row_weight_argument(row_weight, keywords: dict):
    """``row_weight``, or the deprecated ``weight=`` popped from ``keywords``
    (it read as ``F.cross_entropy``'s per-class weight, which it is not)."""
    if "weight" not in keywords:
        return row_weight
    if row_weight is not None:
        raise TypeError("pass row_weight= only (weight= is its old name)")
    warnings.warn("weight= is now row_weight= (a weight per row, not per class); the old name goes in the next "
                  "release", DeprecationWarning, stacklevel=3)
    return keywords.pop("weight")


def check_float_tensor(name: str, x, ndim_min: int = 1, dtypes=FLOAT_DTYPES + (torch.float64,)) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({names}), got {x.dtype}")
    if x.dim() < ndim_min:
        raise ValueError(f"{name} must have at least {ndim_min} dimension(s), got shape {tuple(x.shape)}")


def check_same_device(**tensors) -> None:
    items = [(k, v) for k, v in tensors.items() if v is not None]
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}")


def check_index_tensor(name: str, x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be an integer tensor (int64 or int32), got {x.dtype}")


def compute_dtype(hidden: torch.Tensor, item_emb: torch.Tensor) -> torch.dtype:
    """The dtype of the matmul operands. Under autocast it is the autocast dtype
    (an fp32 item table with bf16 queries is the usual mixed-precision case);
    otherwise both inputs must agree."""
    device_type = hidden.device.type
    if device_type in ("cuda", "cpu") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    if hidden.dtype != item_emb.dtype:
        raise TypeError(
            f"hidden is {hidden.dtype} but item_emb is {item_emb.dtype}; cast one of them "
            "or run under torch.autocast"
        )
    return hidden.dtype


def resolve_impl(impl: str, device: torch.device, dtype: torch.dtype, dim: int, fallback: str = "torch") -> str:
    """Pick the implementation: 'auto' means Triton on CUDA (for widths the
    kernels serve), ``fallback`` otherwise. An explicit choice that cannot run
    raises and says why."""
    impl = canonical_impl(impl)
    if impl == "auto":
        use = device.type == "cuda" and dtype in FLOAT_DTYPES and _kernels_serve(dim, device, dtype)
        if device.type == "cuda" and not use:
            _warn_once_off_kernels(dim, device, dtype, fallback)
        return "triton" if use else fallback
    if impl == "triton":
        if dtype in FLOAT_DTYPES and not _kernels_serve(dim, device, dtype):
            raise ValueError(
                f"impl='triton' has no kernel config for width {dim} with {dtype} operands on {device} (fp32 "
                f"with torch matmul precision {torch.get_float32_matmul_precision()!r} is served up to a "
                "smaller width than bf16/fp16, and only devices of the families the tables claim are served, "
                "tfllmer_fast.kernels.config.FAMILIES); use impl='torch', or bf16 autocast"
            )
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"impl='triton' supports fp32, fp16 and bf16 inputs, got {dtype}; use impl='torch'")
        try:
            import triton  # noqa: F401
        except ImportError as exc:
            raise RuntimeError("impl='triton' needs the triton package, which is not installed") from exc
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1":
            raise RuntimeError(
                f"impl='triton' needs CUDA tensors (got {device}); set TRITON_INTERPRET=1 before "
                "importing tfllmer_fast to run the kernels on CPU tensors through Triton's interpreter"
            )
    return impl


_WARNED: set = set()


def _warn_once_off_kernels(dim: int, device: torch.device, dtype: torch.dtype, fallback: str) -> None:
    """A CUDA call that leaves the kernels says so, once per width, dtype and precision."""
    precision = torch.get_float32_matmul_precision()
    key = (dim, str(device), dtype, precision, fallback)
    if key in _WARNED:
        return
    _WARNED.add(key)
    warnings.warn(
        f"tfllmer_fast: no Triton kernel config for width {dim} with {dtype} operands on {device} (fp32 matmul "
        f"precision {precision!r}): impl='auto' takes impl={fallback!r}, plain torch in GPU-sized chunks. "
        "bf16 autocast, or torch.set_float32_matmul_precision('high'), keeps the fused kernels",
        stacklevel=3,
    )


def invalid_targets(targets: torch.Tensor, num_items: int, ignore_index: int) -> torch.Tensor:
    """Mask of rows whose target is neither the ignore index nor in [0, num_items)."""
    return (targets != ignore_index) & ((targets < 0) | (targets >= num_items))


def raise_on_invalid_targets(targets: torch.Tensor, num_items: int, ignore_index: int) -> None:
    """Synchronizing check; callers use it on CPU, or on CUDA when asked to."""
    bad = invalid_targets(targets, num_items, ignore_index)
    if bool(bad.any()):
        idx = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"targets[{idx}] = {int(targets[idx])} is out of range: targets must lie in "
            f"[0, {num_items}) or equal ignore_index={ignore_index}"
        )


def raise_on_non_finite(name: str, x: torch.Tensor) -> None:
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf")


def _kernels_serve(dim: int, device: torch.device, dtype: torch.dtype) -> bool:
    return kernels().serves_width(dim, device, dtype)


def check_rows(hidden: torch.Tensor, item_emb: torch.Tensor, targets: torch.Tensor, ignore_index: int,
               check_inputs: bool) -> None:
    """The plain-torch paths' input checks: targets always on CPU (free of
    device syncs there), and on CUDA with NaN/Inf too when ``check_inputs``."""
    if torch.compiler.is_compiling():
        return
    if check_inputs or hidden.device.type == "cpu":
        raise_on_invalid_targets(targets, item_emb.shape[0], ignore_index)
    if check_inputs:
        raise_on_non_finite("hidden", hidden)
        raise_on_non_finite("item_emb", item_emb)
