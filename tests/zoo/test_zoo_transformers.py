"""The model zoo's Hugging Face transformers models under every algorithm (docs/zoo.md, tests/zoo/zoo_checks.py)."""

import pytest

import zoo_checks as C
import zoo_models as Z

pytestmark = pytest.mark.zoo
C.require("transformers")


@C.parametrize(Z.HF)
def test_zoo(spec, alg, check):
    C.run_case(spec, alg, check)
