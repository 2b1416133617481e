"""Small graphs the codebook-lowering tests share, and readers of a lowered module."""

import torch
import tvm
from torch import nn
from tvm import relax

from dgms_tvm import compiler, frontend
from dgms_tvm.quant import hard_quantize


class Net(nn.Module):
    """Every conv2d form the pass lowers, a Linear, and layers that must stay FP32."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)  # first conv: stays FP32
        self.bn = nn.BatchNorm2d(16)
        self.conv = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)
        self.dw = nn.Conv2d(32, 32, 3, padding=2, dilation=2, groups=32)
        self.grouped = nn.Conv2d(32, 32, 3, padding=1, groups=4, bias=False)
        self.same = nn.Conv2d(32, 32, 3, padding=1, groups=4, bias=False)  # same spec
        self.fc = nn.Linear(32, 24)
        self.head = nn.Linear(24, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = self.dw(torch.relu(self.conv(x)))
        x = self.same(self.grouped(x))
        return self.head(torch.relu(self.fc(x.mean((2, 3)))))

def quantized_net(bits=4, seed=0):
    torch.manual_seed(seed)
    net = Net().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.2, 0.2)
        net.bn.running_var.uniform_(0.5, 1.5)
    cbs = hard_quantize(net, bits, skip=("first_conv",))  # quantize fc too, keep head ...
    with torch.no_grad():  # ... then put the head back to FP32 values
        net.head.weight.normal_()
    cbs.pop("head.weight")
    return net, cbs

def main_calls(mod):
    """(op name or callee attrs) of every call in main, in order."""
    out = []
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            v = b.value
            if isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op):
                if v.op.name == "relax.call_tir":
                    out.append(("call_tir", mod[v.args[0]]))
                else:
                    out.append((v.op.name, None))
    return out

def lower_model(model, x, bits=4, declared=None):
    imported = frontend.from_torch(model, (x,), declared)
    return imported, compiler.lower(imported, bits)

class Block(nn.Module):
    """A ResNet block with a downsample (two convs lead to one add), a conv with a bias and
    relu6 (MobileNet), and a conv with nothing after it."""

    def __init__(self):
        super().__init__()
        self.c1, self.bn1 = nn.Conv2d(8, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16)
        self.c2, self.bn2 = nn.Conv2d(16, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16)
        self.ds, self.bnd = nn.Conv2d(8, 16, 1, 2, bias=False), nn.BatchNorm2d(16)
        self.c3 = nn.Conv2d(16, 16, 1)
        self.c4 = nn.Conv2d(16, 8, 1, bias=False)

    def forward(self, x):
        y = torch.relu(self.bn1(self.c1(x)))
        y = torch.relu(self.bn2(self.c2(y)) + self.bnd(self.ds(x)))
        y = nn.functional.relu6(self.c3(y))
        return self.c4(y).mean((2, 3))

def main_consts(mod):
    """The constant operands of ``main``'s calls."""
    out = []
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            if isinstance(b.value, relax.Call):
                for a in b.value.args:
                    out += [f for f in (a.fields if isinstance(a, relax.Tuple) else [a])
                            if isinstance(f, tvm.ir.GenericConst)]
    return out

def relax_main(params: dict, body):
    """An IRModule whose ``main`` takes ``params`` (name -> shape, float32) and returns what
    ``body(bb, *vars)`` emits in its dataflow block (written with BlockBuilder, as the
    Before / Expected modules of the pass tests)."""
    bb = relax.BlockBuilder()
    args = [relax.Var(n, relax.TensorType(s, "float32")) for n, s in params.items()]
    with bb.function("main", args):
        with bb.dataflow():
            out = bb.emit_output(body(bb, *args))
        bb.emit_func_output(out)
    return bb.get()
