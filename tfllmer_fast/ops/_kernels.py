"""The one way the ops reach the Triton launchers (``tfllmer_fast.kernels``)."""

from __future__ import annotations


def kernels():
    # Imported on first use: a CPU-only install never needs Triton, and Triton
    # reads TRITON_INTERPRET when the kernels are decorated.
    from tfllmer_fast import kernels as launchers

    return launchers
