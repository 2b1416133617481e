"""Relax passes of the project, one per module."""

from .epilogue import fuse_epilogues
from .int8_chain import chain_int8
from .lower_codebook import lower_codebook_layers
from .records import LayerRecord, LoweringPolicy

__all__ = ["LayerRecord", "LoweringPolicy", "chain_int8", "fuse_epilogues",
           "lower_codebook_layers"]
