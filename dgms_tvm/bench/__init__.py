"""Benchmarks (above the compile core, which never imports them): FP32 against DGMS on
devices through a tracker (:mod:`.on_device`), on this host (:mod:`.on_host`), the GEMV
kernels (:mod:`.gemv_kernels`), and the onnxruntime peers (:mod:`.ort_int8`,
:mod:`.peer_kit`)."""
