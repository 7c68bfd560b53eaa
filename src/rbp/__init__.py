"""rbp: learning with random backpropagation and the deep learning channel."""

from .errors import ConfigError, DataError, RBPError, UnsupportedModelError

__version__ = "0.1.0"

__all__ = ["RBPError", "ConfigError", "DataError", "UnsupportedModelError", "__version__"]
