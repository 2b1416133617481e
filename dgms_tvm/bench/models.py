"""The model bench: torchvision architectures as a new user brings them (random weights,
BatchNorm statistics far from the identity, DGMS codebooks in every conv but the first,
exported by ``torch.onnx.export``), each compiled for every target and measured side by
side: the codebook layers lowered and the share of their multiply-adds on int8 kernels per
core, the exact build against onnxruntime FP32, the int8 numerics against exact beside
onnxruntime static int8's (:mod:`.accuracy`), and, on an emulated core, the instructions and
estimated cycles of our FP32 and DGMS builds and onnxruntime's (:mod:`.on_device`).

torchvision is a dev dependency, for its architectures only (no weights are downloaded). Its
PyPI wheel carries compiled operators built against PyTorch's CUDA build, which its package
``__init__`` loads; the architectures need none of them, so :func:`architecture` imports
``torchvision.models`` without running that ``__init__``.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

from ..errors import UserError

#: The architectures benched by default: 12 classification families beyond ResNet and
#: MobileNetV2, a vision transformer and a segmentation model.
ARCHITECTURES = ("efficientnet_b0", "mobilenet_v3_large", "mobilenet_v3_small",
                 "shufflenet_v2_x1_0", "resnext50_32x4d", "regnet_y_400mf", "regnet_x_400mf",
                 "convnext_tiny", "densenet121", "squeezenet1_1", "mnasnet1_0", "googlenet",
                 "vit_b_16", "lraspp_mobilenet_v3_large")
#: Architectures whose Linear layers are codebook layers too (a transformer's and a
#: ConvNeXt block's MLP are most of their arithmetic).
LINEAR_QUANTIZED = ("convnext_tiny", "vit_b_16")
SEGMENTATION = ("lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large", "fcn_resnet50")


def _torchvision_models():
    """``torchvision.models`` imported without torchvision's package ``__init__`` (see the
    module's text)."""
    if "torchvision.models" in sys.modules:
        return sys.modules["torchvision.models"]
    spec = importlib.util.find_spec("torchvision")
    if spec is None:
        raise UserError("the model bench needs torchvision (a dev dependency: "
                        "pip install -e '.[dev]')")
    if "torchvision" not in sys.modules:
        pkg = types.ModuleType("torchvision")
        pkg.__path__ = list(spec.submodule_search_locations)
        pkg.__spec__ = spec
        sys.modules["torchvision"] = pkg
    import torchvision.models

    return torchvision.models


def architecture(name: str):
    """torchvision's ``name`` with random weights, in eval mode (a segmentation model
    returns its ``out`` map)."""
    import torch

    models = _torchvision_models()
    if name in SEGMENTATION:
        import torchvision.models.segmentation as seg

        net = getattr(seg, name)(weights=None, weights_backbone=None)

        class Out(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net = net

            def forward(self, x):
                return self.net(x)["out"]

        return Out().eval()
    ctor = getattr(models, name, None)
    if ctor is None or not callable(ctor):
        raise UserError(f"torchvision has no architecture {name!r}")
    return ctor(weights=None).eval()


def user_export(name: str, bits: int, path: Path, seed: int = 0) -> Path:
    """``name`` as a user exports it: codebooks of ``bits`` in every conv but the first (and
    every Linear of :data:`LINEAR_QUANTIZED`'s), BatchNorm statistics drawn away from the
    identity, ONNX opset 17 by the legacy exporter (BatchNorm folded), 224 x 224 (299 for
    inception)."""
    import torch

    from ..frontend import onnx_bytes
    from ..quant import hard_quantize

    torch.manual_seed(seed)
    model = architecture(name)
    g = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    skip = ("first_conv",) if name in LINEAR_QUANTIZED else ("first_conv", "linear")
    hard_quantize(model, bits, skip=skip)
    size = 299 if name.startswith("inception") else 224
    x = torch.randn(1, 3, size, size, generator=g)
    path.write_bytes(onnx_bytes(model, (x,)))
    return path


def int8_share(records) -> dict:
    """The codebook layers a lowering took, and the share of their multiply-adds on int8
    kernels (``macs`` of each :class:`~dgms_tvm.passes.records.LayerRecord`)."""
    layers = [r for r in records if r.lowered]
    total = sum(r.macs for r in layers)
    int8 = sum(r.macs for r in layers if (r.strategy or "").startswith("int8"))
    return {"codebook_layers": len(layers), "layers": len(records),
            "int8_layers": sum((r.strategy or "").startswith("int8") for r in layers),
            "int8_mac_share": int8 / total if total else 0.0,
            "not_int8": sorted({r.reason.split(":", 1)[-1].strip() for r in layers
                                if not (r.strategy or "").startswith("int8") and r.reason})}
