"""The learning channel: algorithms as data, feedback matrices, signal operators."""

from .algorithm import ALGORITHMS, DESCRIPTIONS, Algorithm, algorithm
from .feedback import DISTRIBUTIONS
from .quantize import quantize

__all__ = ["ALGORITHMS", "DESCRIPTIONS", "Algorithm", "algorithm", "DISTRIBUTIONS", "quantize"]
