"""The array-module switch: the same graph code runs on NumPy/SciPy (CPU) and
on CuPy/cupyx (GPU)."""

from __future__ import annotations

import types

import numpy as np
import scipy.sparse


def cupy_available() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # ImportError, or a CUDA runtime without a device
        return False


def modules(backend: str) -> tuple[types.ModuleType, types.ModuleType]:
    """(xp, sparse) for ``"numpy"`` or ``"cupy"``."""
    if backend == "cupy":
        import cupy
        import cupyx.scipy.sparse

        return cupy, cupyx.scipy.sparse
    return np, scipy.sparse


def is_cupy_array(x) -> bool:
    return type(x).__module__.startswith("cupy")


def is_torch_tensor(x) -> bool:
    return type(x).__module__.startswith("torch")


def to_backend(x, backend: str):
    """Move a NumPy / torch / CuPy array to the backend's array type (no copy
    when it is already there; DLPack between torch CUDA and CuPy)."""
    xp, _ = modules(backend)
    if is_torch_tensor(x):
        if backend == "cupy":
            return xp.from_dlpack(x.detach())
        return x.detach().cpu().numpy()
    if is_cupy_array(x):
        return x if backend == "cupy" else x.get()
    return xp.asarray(x)


def like_input(y, template):
    """Return ``y`` (a NumPy or CuPy array) as the array type of ``template``."""
    if is_torch_tensor(template):
        import torch

        if is_cupy_array(y):
            return torch.from_dlpack(y).to(template.device)
        return torch.from_numpy(np.ascontiguousarray(y)).to(template.device)
    if is_cupy_array(template):
        import cupy

        return cupy.asarray(y)
    return y.get() if is_cupy_array(y) else y
