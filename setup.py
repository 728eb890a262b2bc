"""Build script. The Triton kernels in ``kernels/`` install as ``tfllmer_fast.kernels``."""

from setuptools import setup

setup(
    name="tfllmer_fast",
    version="0.1.0",
    description="Fused GPU kernels for training and evaluating sequential recommenders over large item catalogs",
    python_requires=">=3.9",
    packages=["tfllmer_fast", "tfllmer_fast.ops", "tfllmer_fast.reference", "tfllmer_fast.kernels"],
    package_dir={"tfllmer_fast.kernels": "kernels"},
    install_requires=[
        "torch>=2.4",
        "numpy",
        "scipy",
        "tqdm",
        "triton>=3.0; sys_platform == 'linux' and platform_machine == 'x86_64'",
    ],
    extras_require={
        "test": ["pytest", "pytest-benchmark"],
        "bench": ["pytest-benchmark", "cut-cross-entropy", "liger-kernel"],
    },
    entry_points={"console_scripts": ["tfllmer-fast = tfllmer_fast.cli:main"]},
)
