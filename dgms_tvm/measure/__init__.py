"""Measuring kernels: the one service that the compile path's per-layer choice
(:mod:`dgms_tvm.choice`), the benchmarks (:mod:`dgms_tvm.bench`) and tuning
(:mod:`dgms_tvm.tune`) stand on, and which imports none of them.

- :mod:`.host`: time these kernels here (each layer of a build, its kernels alone);
- :mod:`.devices`: count these kernels on the devices under a tracker key (instructions and
  estimated cycles per call, each layer's kernels alone);
- :mod:`.jobs`: the device job pool (jobs handed to whichever device under the key is free,
  a kernel or model run with its instructions counted);
- :mod:`.counts`: instructions per call from the emulated device's counter, averaged where a
  kernel is small;
- :mod:`.sites`: a build's call sites grouped into layers; :mod:`.operands`: random
  operands for a kernel run alone.
"""
