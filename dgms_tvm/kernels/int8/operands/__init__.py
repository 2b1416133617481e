"""What the int8 convs share: their operands and the pieces around their arithmetic.

- :mod:`.quantize`: the activations' run-time quantize (``q8_quant``) and the quantized
  input's layout (:class:`~.quantize.QuantSpec`);
- :mod:`.decode`: the weight's packed indices decoded to int8 in a conv's order
  (``q8_decode``);
- :mod:`.weights`: the weights' int8 forms made at compile time;
- :mod:`.writer`: a kernel's outputs written as the next int8 conv's input;
- :mod:`.tiles`: the register tiles of the widening and lookup-table convs;
- :mod:`.lut_tables`: the lookup-table conv's tables and its NumPy oracle.
"""
