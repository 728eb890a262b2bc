import numpy as np
import pytest

from tfllmer_fast.graph.array_module import cupy_available

DATA = __import__("pathlib").Path(__file__).resolve().parents[2] / ".." / "shared" / "data"

BACKENDS = ["numpy", "cpp"] + (["cupy"] if cupy_available() else [])


def read_s3rec(path):
    with open(path) as f:
        return [np.array(line.split()[1:], dtype=np.int64) for line in f if line.strip()]


@pytest.fixture(scope="session")
def beauty_sequences():
    path = DATA / "Beauty.txt"
    if not path.exists():
        pytest.skip(f"{path} is not present")
    seqs = read_s3rec(path)
    return seqs, int(max(s.max() for s in seqs))


def random_sequences(rng, num_users, num_items, max_len):
    return [rng.integers(1, num_items + 1, size=rng.integers(0, max_len + 1)) for _ in range(num_users)]
