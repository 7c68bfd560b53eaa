"""The model zoo's timm models under every algorithm (docs/zoo.md, tests/zoo/zoo_checks.py)."""

import pytest

import zoo_checks as C
import zoo_models as Z

pytestmark = pytest.mark.zoo
C.require("timm")


@C.parametrize(Z.TIMM)
def test_zoo(spec, alg, check):
    C.run_case(spec, alg, check)
