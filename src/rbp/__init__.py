"""rbp: learning with random backpropagation and the deep learning channel.

>>> import rbp, torch
>>> net = rbp.convert(rbp.mlp([784, 100, 10]), "srbp", seed=0)
>>> # train with any torch.optim optimizer: .grad holds SRBP's direction
"""

__version__ = "0.1.0"      # the one place the version is written (pyproject.toml reads it)

from .channel import ALGORITHMS, DESCRIPTIONS, Algorithm, algorithm, quantize
from .errors import ConfigError, DataError, RBPError, UnsupportedModelError
from .models import mlp
from .nn import FeedbackLinear, convert, register_site, SiteAdapter, UnknownWeightWarning

__all__ = [
    "ALGORITHMS", "DESCRIPTIONS", "Algorithm", "algorithm", "quantize", "convert", "mlp",
    "FeedbackLinear", "register_site", "SiteAdapter", "UnknownWeightWarning", "RBPError", "ConfigError", "DataError", "UnsupportedModelError", "__version__",
]
