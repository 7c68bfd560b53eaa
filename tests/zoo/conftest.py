"""The model zoo (docs/zoo.md): tiny random-init models of transformers, timm and torchvision.

Every test here carries the ``zoo`` marker (CI runs them in a venv of their own: ``.ci/run``);
without the libraries the modules skip.  One thread per test: the zoo's models are tiny and the
machines that run it are shared.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
