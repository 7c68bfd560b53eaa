import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")


def _shared_data():
    env = os.environ.get("RBP_DATA_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent
    cand = here.parent / "shared" / "data"
    return cand if cand.is_dir() else None


@pytest.fixture(scope="session")
def data_dir():
    """The folder with the real MNIST / Fashion-MNIST files (skips the test where absent)."""
    d = _shared_data()
    if d is None or not (d / "mnist").is_dir():
        pytest.skip("real MNIST files not found: set RBP_DATA_DIR to the folder holding mnist/")
    return d


@pytest.fixture(autouse=True)
def _float_defaults():
    torch.set_default_dtype(torch.float32)
    yield
