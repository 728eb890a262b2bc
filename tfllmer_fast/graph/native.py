"""Loader of the optional C++ extension (``tfllmer_fast._native``)."""

from __future__ import annotations

import warnings

_WARNED = False


def load():
    """The extension module, or None when it was not built."""
    try:
        from tfllmer_fast import _native
    except ImportError:
        return None
    return _native


def warn_fallback() -> None:
    """Say once per process that the NumPy path stands in for the native one."""
    global _WARNED
    if not _WARNED:
        warnings.warn(
            "tfllmer_fast: the native (C++) graph builder is not built (no compiler or pybind11 at "
            "install time); using the NumPy path. Reinstall with a C++ compiler for the fast builder.",
            RuntimeWarning,
            stacklevel=3,
        )
        _WARNED = True
