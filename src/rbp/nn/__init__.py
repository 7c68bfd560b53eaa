"""How the learning channel attaches to torch modules."""

from .activations import ACTIVATIONS, NoDerivative
from .conv import ConvOps, FeedbackConv1d, FeedbackConv2d, FeedbackConvNd, use_channels_last
from .convert import LearningChannel, convert
from .embedding import FeedbackEmbedding
from .layers import FeedbackLinear, StackedLinear
from .registry import SiteAdapter, register_site, unregister_site
from .summary import ConversionReport, UnknownWeightWarning

__all__ = ["ACTIVATIONS", "NoDerivative", "LearningChannel", "convert", "FeedbackLinear", "StackedLinear",
           "ConvOps", "FeedbackConvNd", "FeedbackConv1d", "FeedbackConv2d", "FeedbackEmbedding", "use_channels_last",
           "SiteAdapter", "register_site", "unregister_site", "ConversionReport", "UnknownWeightWarning"]
