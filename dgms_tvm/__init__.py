"""dgms-tvm: compile DGMS codebook-quantized networks with Apache TVM for Cortex-A CPUs."""

__version__ = "0.1.0"
