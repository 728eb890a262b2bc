"""Build script. The Triton kernels in ``kernels/`` install as
``tfllmer_fast.kernels``; ``csrc/`` builds the optional native graph builder
``tfllmer_fast._native``. A machine without a C++ compiler (or without
pybind11 at build time) still installs: the package then uses its NumPy path
and says so when the native backend is asked for."""

import sys

from setuptools import find_packages, setup

try:
    from pybind11.setup_helpers import Pybind11Extension
    from pybind11.setup_helpers import build_ext as _build_ext
except ImportError:
    Pybind11Extension = None


def _native_extension():
    if Pybind11Extension is None:
        print("tfllmer_fast: pybind11 not found, skipping the native graph builder", file=sys.stderr)
        return [], {}

    class OptionalBuildExt(_build_ext):
        """Try with OpenMP, then without, then give up with a warning."""

        def build_extensions(self):
            for openmp in (True, False):
                for ext in self.extensions:
                    ext.extra_compile_args = ["-O3"] + (["-fopenmp"] if openmp else [])
                    ext.extra_link_args = ["-fopenmp"] if openmp else []
                try:
                    super().build_extensions()
                    return
                except Exception as exc:  # compiler missing or flag unsupported
                    print(f"tfllmer_fast: native build failed (openmp={openmp}): {exc}", file=sys.stderr)
            print("tfllmer_fast: the native graph builder is not built; the NumPy path will be used",
                  file=sys.stderr)

    ext = Pybind11Extension(
        "tfllmer_fast._native",
        ["csrc/module.cpp", "csrc/cooccurrence.cpp"],
        include_dirs=["csrc"],
        cxx_std=17,
    )
    return [ext], {"build_ext": OptionalBuildExt}


ext_modules, cmdclass = _native_extension()

setup(
    name="tfllmer_fast",
    version="0.1.0",
    description="Fused GPU kernels for training and evaluating sequential recommenders over large item catalogs",
    python_requires=">=3.9",
    packages=find_packages(include=["tfllmer_fast", "tfllmer_fast.*"]) + ["tfllmer_fast.kernels"],
    package_dir={"tfllmer_fast.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    install_requires=[
        "torch>=2.4",
        "numpy",
        "scipy",
        "tqdm",
        "triton>=3.0; sys_platform == 'linux' and platform_machine == 'x86_64'",
    ],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "hypothesis", "pandas", "matplotlib", "sentence-transformers",
                 "transformers"],
        "plot": ["matplotlib"],
        "bench": ["pytest-benchmark", "cut-cross-entropy", "liger-kernel"],
        "gpu": ["cupy-cuda12x"],
        "text": ["sentence-transformers", "transformers"],
    },
    entry_points={"console_scripts": ["tfllmer-fast = tfllmer_fast.app.cli:main"]},
)
