"""The model zoo's timm models under every algorithm (docs/zoo.md, tests/zoo/zoo_checks.py)."""

import pytest

import zoo_checks as C
import zoo_models as Z

pytestmark = pytest.mark.zoo
C.require("timm")

CASES = C.cases(Z.TIMM)


@pytest.mark.parametrize("spec,alg,check", CASES, ids=[f"{s.name}-{a}-{c}" for s, a, c in CASES])
def test_zoo(spec, alg, check):
    try:
        C.run(spec, alg, check)
    except C.Refused as e:
        pytest.skip(f"refused as expected (see its convert case): {e}")
