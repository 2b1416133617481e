"""The PyTorch half: DGMS quantisation of torch models.

``convert`` wraps layers with a per-layer Gaussian mixture, training fine-tunes them with the
soft assignment, ``export`` gives the hard-assigned model and its codebooks in the compiler's
format, ``load_official_checkpoint`` imports a checkpoint of the official DGMS code.
"""

from .checkpoint import load_official_checkpoint
from .convert import DGMSExport, convert, dgms_layers, export, freeze
from .gmm import GaussianMixture
from .hard import hard_quantize, kmeans_codebook
from .layers import DGMSConv2d, DGMSLinear

__all__ = ["DGMSConv2d", "DGMSExport", "DGMSLinear", "GaussianMixture", "convert",
           "dgms_layers", "export", "freeze", "hard_quantize", "kmeans_codebook",
           "load_official_checkpoint"]
