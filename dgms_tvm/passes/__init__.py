"""Relax passes of the project, one per module."""

from .lower_codebook import lower_codebook_layers
from .records import LayerRecord, LoweringPolicy

__all__ = ["LayerRecord", "LoweringPolicy", "lower_codebook_layers"]
