"""The PyTorch half: DGMS quantisation of torch models."""

from .hard import hard_quantize, kmeans_codebook

__all__ = ["hard_quantize", "kmeans_codebook"]
