"""dgms-tvm: compile DGMS codebook-quantized networks with Apache TVM for Cortex-A CPUs."""

import os

__version__ = "0.1.0"

# TVM's CPU thread pool defaults to half the logical CPUs (it assumes two hyperthreads per
# core), so on a 2-vCPU machine with one thread per core it used 1 thread while onnxruntime
# and numpy used 2. Every core, unless the user chose: set before TVM's pool starts.
os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))
