"""The blocks of the models users bring, as small torch modules exported to ONNX the way a
user exports a torchvision model (BatchNorm with non-trivial statistics folded by the
exporter, DGMS codebooks in every conv but the first): squeeze-excite with hardsigmoid and
sigmoid, SiLU / hardswish / GELU, grouped convs, channel split, concat and shuffle, LayerNorm
and Linear over the channels of an NHWC tensor, a vision transformer's encoder, a
segmentation head, a dense block."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from dgms_tvm import frontend
from dgms_tvm.quant import hard_quantize


def cbn(cin, cout, k=1, stride=1, groups=1, act=None):
    """conv + BatchNorm (+ activation), as torchvision's Conv2dNormActivation."""
    layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, *([act()] if act else []))


class SqueezeExcite(nn.Module):
    """Global pool -> 1x1 conv -> act -> 1x1 conv -> gate -> channel-wise multiply."""

    def __init__(self, c, squeeze, act=nn.ReLU, gate=nn.Hardsigmoid):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)
        self.act, self.gate = act(), gate()

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * self.gate(self.fc2(self.act(self.fc1(s))))


class MobileNetV3Block(nn.Module):
    """Expand (hardswish), depthwise (hardswish), squeeze-excite (relu, hardsigmoid),
    project, residual: channels that fill no group of 4, 8 or 16."""

    def __init__(self, c=20, e=72, squeeze=18):
        super().__init__()
        self.stem = cbn(3, c, 3, 2, act=nn.Hardswish)
        self.expand = cbn(c, e, act=nn.Hardswish)
        self.dw = cbn(e, e, 3, groups=e, act=nn.Hardswish)
        self.se = SqueezeExcite(e, squeeze)
        self.project = cbn(e, c)

    def forward(self, x):
        x = self.stem(x)
        return x + self.project(self.se(self.dw(self.expand(x))))


class EfficientNetBlock(nn.Module):
    """MBConv: expand (SiLU), strided depthwise (SiLU), squeeze-excite (SiLU, sigmoid),
    project; the head's 1x1 conv (SiLU), pool, classifier."""

    def __init__(self, c=16, e=96, squeeze=4, out=40, classes=10):
        super().__init__()
        self.stem = cbn(3, c, 3, 2, act=nn.SiLU)
        self.expand = cbn(c, e, act=nn.SiLU)
        self.dw = cbn(e, e, 5, 2, groups=e, act=nn.SiLU)
        self.se = SqueezeExcite(e, squeeze, nn.SiLU, nn.Sigmoid)
        self.project = cbn(e, out)
        self.head = cbn(out, 64, act=nn.SiLU)
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = self.project(self.se(self.dw(self.expand(self.stem(x)))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.head(x), 1), 1))


class GroupedBlock(nn.Module):
    """ResNeXt's bottleneck (32 groups of 4 channels) and a RegNet-style one (group width 8,
    stride 2), with their residuals."""

    def __init__(self):
        super().__init__()
        self.stem = cbn(3, 64, 3, 2, act=nn.ReLU)
        self.a = nn.Sequential(cbn(64, 128, act=nn.ReLU), cbn(128, 128, 3, groups=32,
                                                               act=nn.ReLU), cbn(128, 64))
        self.b = nn.Sequential(cbn(64, 48, act=nn.ReLU), cbn(48, 48, 3, 2, groups=6,
                                                             act=nn.ReLU), cbn(48, 96))
        self.down = cbn(64, 96, 1, 2)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.a(x))
        return F.relu(self.b(x) + self.down(x))


class ShuffleUnit(nn.Module):
    """ShuffleNetV2: split the channels in two, one half through 1x1 / depthwise / 1x1,
    concat, shuffle (reshape, transpose, reshape); then a strided unit with two branches."""

    def __init__(self, c=58):
        super().__init__()
        self.stem = cbn(3, 2 * c, 3, 2, act=nn.ReLU)
        h = c
        self.branch = nn.Sequential(cbn(h, h, act=nn.ReLU), cbn(h, h, 3, groups=h),
                                    cbn(h, h, act=nn.ReLU))
        self.left = nn.Sequential(cbn(2 * c, 2 * c, 3, 2, groups=2 * c),
                                  cbn(2 * c, c, act=nn.ReLU))
        self.right = nn.Sequential(cbn(2 * c, c, act=nn.ReLU), cbn(c, c, 3, 2, groups=c),
                                   cbn(c, c, act=nn.ReLU))

    @staticmethod
    def shuffle(x, groups=2):
        n, c, h, w = x.size()
        x = x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous()
        return x.view(n, c, h, w)

    def forward(self, x):
        x = self.stem(x)
        a, b = x.chunk(2, dim=1)
        x = self.shuffle(torch.cat((a, self.branch(b)), 1))
        return self.shuffle(torch.cat((self.left(x), self.right(x)), 1))


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7, then over the channels of the NHWC tensor: LayerNorm, Linear (4x),
    GELU, Linear; a layer scale, the residual."""

    def __init__(self, c=40):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 4, 4)
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.pw1, self.pw2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.pw2(F.gelu(self.pw1(self.norm(y)))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class TinyViT(nn.Module):
    """A vision transformer: patch embedding, class token, position embedding, an encoder
    layer (LayerNorm, multi-head attention, MLP with GELU), the head on the class token."""

    def __init__(self, dim=48, heads=4, patch=8, size=32, classes=10):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, patch, patch)
        tokens = (size // patch) ** 2 + 1
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.1)
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.1)
        self.layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0,
                                                activation="gelu", batch_first=True,
                                                norm_first=True)
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls.expand(x.shape[0], -1, -1), x), 1) + self.pos
        return self.head(self.norm(self.layer(x))[:, 0])


class SegmentationHead(nn.Module):
    """A strided backbone, an ASPP-like pair of branches (one on the pooled map, upsampled
    back), the classifier conv, and the bilinear upsample to the input's size."""

    def __init__(self, c=24, classes=5):
        super().__init__()
        self.backbone = nn.Sequential(cbn(3, c, 3, 2, act=nn.ReLU), cbn(c, 2 * c, 3, 2,
                                                                         act=nn.ReLU))
        self.branch = cbn(2 * c, c, act=nn.ReLU)
        self.pooled = cbn(2 * c, c, act=nn.ReLU)
        self.classify = nn.Conv2d(2 * c, classes, 1)

    def forward(self, x):
        f = self.backbone(x)
        p = F.interpolate(self.pooled(F.adaptive_avg_pool2d(f, 1)), size=f.shape[-2:],
                          mode="bilinear", align_corners=False)
        y = self.classify(torch.cat((self.branch(f), p), 1))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


class DenseBlock(nn.Module):
    """DenseNet: each layer's output concatenated to its input (bn-relu-conv order, a
    BatchNorm that no conv before it can fold), then the transition."""

    def __init__(self, c=24, growth=12):
        super().__init__()
        self.stem = cbn(3, c, 3, 2, act=nn.ReLU)
        self.layers = nn.ModuleList()
        for i in range(2):
            cin = c + i * growth
            self.layers.append(nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(),
                                             nn.Conv2d(cin, 2 * growth, 1, bias=False),
                                             nn.BatchNorm2d(2 * growth), nn.ReLU(),
                                             nn.Conv2d(2 * growth, growth, 3, padding=1,
                                                       bias=False)))
        self.transition = nn.Sequential(nn.BatchNorm2d(c + 2 * growth), nn.ReLU(),
                                        nn.Conv2d(c + 2 * growth, c, 1, bias=False),
                                        nn.AvgPool2d(2))

    def forward(self, x):
        x = self.stem(x)
        for layer in self.layers:
            x = torch.cat((x, layer(x)), 1)
        return self.transition(x)


#: name -> (the module, its input shape, whether its Linears are codebook layers too)
BLOCKS = {
    "mobilenetv3": (MobileNetV3Block, (1, 3, 24, 24), False),
    "efficientnet": (EfficientNetBlock, (1, 3, 32, 32), False),
    "grouped": (GroupedBlock, (1, 3, 24, 24), False),
    "shuffle": (ShuffleUnit, (1, 3, 24, 24), False),
    "convnext": (ConvNeXtBlock, (1, 3, 32, 32), True),
    "vit": (TinyViT, (1, 3, 32, 32), True),
    "segmentation": (SegmentationHead, (1, 3, 32, 32), False),
    "dense": (DenseBlock, (1, 3, 24, 24), False),
}


def user_model(name: str, bits: int = 4, seed: int = 0):
    """(module, example input) of block ``name``: random weights, BatchNorm statistics far
    from the identity, DGMS codebooks of ``bits`` in every conv but the first (and every
    Linear where the block's are quantized)."""
    make, shape, linears = BLOCKS[name]
    torch.manual_seed(seed)
    model = make().eval()
    g = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    hard_quantize(model, bits, skip=("first_conv",) if linears else ("first_conv", "linear"))
    return model, torch.randn(*shape, generator=g)


def user_onnx(name: str, bits: int = 4, seed: int = 0) -> tuple[bytes, torch.Tensor]:
    """Block ``name`` exported as a user exports it (:func:`frontend.onnx_bytes`: opset 17,
    the legacy exporter, BatchNorm folded)."""
    model, x = user_model(name, bits, seed)
    return frontend.onnx_bytes(model, (x,)), x
