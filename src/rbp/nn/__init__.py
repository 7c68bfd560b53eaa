"""How the learning channel attaches to torch modules."""

from .activations import ACTIVATIONS, NoDerivative
from .conv import ConvOps, FeedbackConv2d, use_channels_last
from .convert import LearningChannel, convert
from .layers import FeedbackLinear, StackedLinear, use_sparse_input

__all__ = ["ACTIVATIONS", "NoDerivative", "LearningChannel", "convert", "FeedbackLinear", "StackedLinear",
           "ConvOps", "FeedbackConv2d", "use_sparse_input", "use_channels_last"]
