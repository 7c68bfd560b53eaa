"""Theory workbench: averaged learning dynamics and the theorems that predict them.

* :mod:`rbp.theory.linear` -- the ODE systems of RBP/SRBP and gradient
  descent for the small networks of paper 1, section 7, and an integrator
  that runs them to rest.
* :mod:`rbp.theory.predictions` -- what Theorems 1-12 predict (conserved
  quantities, fixed points from polynomial roots, stability), computed
  without integrating.
* :mod:`rbp.theory.checks` -- integrate and compare, one function per theorem.
* :mod:`rbp.theory.twolayer` -- two-layer feedback-alignment networks
  (Song, Xu & Lafferty 2021), batched over runs with torch.
* :mod:`rbp.theory.mnist` -- paper 3's MNIST network (784-1000-10 ReLU),
  trained by the engine with random feedback and a penalty on the output weights.
* :mod:`rbp.theory.figures` -- the pictures (PNG).
* :mod:`rbp.theory.cli` -- ``rbp theory ...`` (``register(subparsers)``).
"""

from .linear import (  # noqa: F401
    Trajectory,
    chain_gd_rhs,
    chain_rbp_rhs,
    expansive_gd_rhs,
    expansive_rbp_rhs,
    integrate,
    integrate_autoencoder,
    integrate_chain,
    integrate_expansive,
    integrate_nonlinear,
    integrate_three_layer,
    nonlinear_rhs,
    three_layer_rhs,
)
from .predictions import (  # noqa: F401
    autoencoder_fixed_point,
    chain_fixed_point,
    chain_gd_fixed_point,
    chain_invariants,
    chain_polynomial,
    expansive_fixed_point,
    nonlinear_fixed_point,
    polynomial_flow_limit,
    three_layer_product_limit,
)
