"""The int8 kernels: activations quantized per tensor, the codebook as int8 entries, exact
int32 sums. One module per conv micro-kernel, the depthwise convs, and what they share
(:mod:`.operands`).

Convs (which core takes which: :data:`dgms_tvm.strategies.INT8_CONV`):

- :mod:`.sdot`: the dot-product conv (``q8_conv2d``): ``sdot`` 4 x 4 x 4 tiles on aarch64
  cores with dotprod, a generic vector form elsewhere; its hand schedule is
  :mod:`.sdot_schedule` and its x86 form (AVX-512 VNNI ``vpdpbusd``) :mod:`.vnni`;
- :mod:`.smmla`: the same compute in 8-channel groups on i8mm cores (``q8m_conv2d``);
- :mod:`.widening`: ``smull`` / ``smlal`` over 16 input channels on aarch64 cores without
  dotprod (``q8l_conv2d``);
- :mod:`.lut`: lookup tables for 1- and 2-bit layers on those cores (``q8t_conv2d``);
- :mod:`.gathered`: the few-channel stem, its taps gathered into a 1x1 conv
  (``q8_im2col``);
- :mod:`.depthwise` (``q8_dw_conv2d``) and its x86 rows form :mod:`.depthwise_rows`
  (``q8r_dw_conv2d``).
"""
