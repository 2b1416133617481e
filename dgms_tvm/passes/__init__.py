"""Relax passes of the project, one per module."""

from .epilogue import fuse_epilogues
from .lower_codebook import lower_codebook_layers
from .records import LayerRecord, LoweringPolicy

__all__ = ["LayerRecord", "LoweringPolicy", "fuse_epilogues", "lower_codebook_layers"]
