"""The float32-arithmetic kernels: the exact strategy's codebook conv, depthwise conv and
dense layer (the weight decoded to its codebook values), and the FP32 baseline (the same
kernels on the float32 weight itself).

- :mod:`.conv2d`: any conv (stride, padding, dilation, groups), family ``cb_conv2d``;
- :mod:`.depthwise`: one filter per channel with its epilogue, family ``dw_conv2d``;
- :mod:`.dense`: a Linear / matmul with a constant weight, family ``cb_dense`` (batch-1
  dense layers take the GEMV kernels of :mod:`..gemv` instead).
"""
