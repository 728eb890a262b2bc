"""Importing a client library inside its tests: skipped where it is not
installed (the project's own environment), required where .ci/run installed
it (TFLLMER_CLIENT names it, so a broken client venv fails instead of
skipping every test)."""

import os

import pytest


def import_client(name: str):
    if os.environ.get("TFLLMER_CLIENT") == name:
        return __import__(name)
    return pytest.importorskip(name)
