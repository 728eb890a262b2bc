import pytest
import scipy.sparse as sp
import torch

from tfllmer_fast.integrations._common import exclusions_from_pairs, exclusions_from_scipy_csr, require


def test_pairs_to_csr_groups_by_row():
    rows = torch.tensor([2, 0, 2, 1, 0])
    items = torch.tensor([7, 3, 1, 4, 3])
    indptr, got = exclusions_from_pairs(rows, items, num_rows=4)
    assert indptr.tolist() == [0, 2, 3, 5, 5]
    assert got.tolist() == [3, 3, 4, 7, 1]


def test_pairs_reject_rows_out_of_range():
    with pytest.raises(ValueError, match="rows must lie"):
        exclusions_from_pairs(torch.tensor([0, 3]), torch.tensor([1, 1]), num_rows=3)


def test_scipy_csr_rows_in_the_asked_order():
    m = sp.csr_matrix(([1, 1, 1], ([0, 1, 1], [5, 2, 4])), shape=(3, 6))
    indptr, items = exclusions_from_scipy_csr(m, rows=[1, 2, 0])
    assert indptr.tolist() == [0, 2, 2, 3]
    assert items.tolist() == [2, 4, 5]


def test_missing_client_names_the_install():
    with pytest.raises(ImportError, match="pip install nosuchclient"):
        require("nosuchclient_xyz", "pip install nosuchclient")


def test_package_imports_no_client():
    import subprocess
    import sys

    code = ("import sys, tfllmer_fast.integrations, tfllmer_fast.integrations._common; "
            "print([m for m in ('recbole', 'rectools', 'replay', 'lightning', 'pytorch_lightning') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_read_s3rec_lines(tmp_path):
    from tfllmer_fast.integrations._common import read_s3rec

    path = tmp_path / "tiny.txt"
    path.write_text("1 5 7 5\n\n2 9\n")
    users, items, positions = read_s3rec(path)
    assert users.tolist() == [1, 1, 1, 2]
    assert items.tolist() == [5, 7, 5, 9]
    assert positions.tolist() == [0, 1, 2, 0]
    with pytest.raises(FileNotFoundError, match="path"):
        read_s3rec(tmp_path / "missing.txt")
