"""The seeds' timm models, registered as exporters ``vit_b32``, ``twins_pcpvt_s`` and ``bit_m_r50x1``.

All three are built by timm with ``pretrained=False`` (timm never downloads here) and seeded random weights; a
local checkpoint supplies real ones. They are created under ``timm.layers.set_layer_config(exportable=True)``,
which makes timm pick export-friendly layers. What matters most: attention is written out as
MatMul -> Softmax -> MatMul instead of ``F.scaled_dot_product_attention``, which the TorchScript exporter cannot
emit below opset 14 and which would hide the Softmax that graph passes and precision configs look for.

* ``vit_b32``: timm ``vit_base_patch32_224`` (seed 000), opset 11, ``input`` -> ``output``. Checkpoints in timm's
  key layout (a PyTorch state dict). The seed's AugReg ``.npz`` is not a torch file and is not read here.
* ``twins_pcpvt_s``: timm ``twins_pcpvt_small`` (seed 001), opset 11, ``input`` -> ``output``. timm's Twins was
  ported from Meituan-AutoML/Twins keeping the module names, so an upstream ``pcpvt_small_v0`` state dict
  (``gvt.py``: class ``CPVTV2``, which deletes PVT's ``pos_embeds`` and ``cls_token``) has exactly timm's keys
  (``patch_embeds.i.{proj,norm}``, ``blocks.i.j.{norm1,attn.q,attn.kv,attn.proj,attn.sr,attn.norm,norm2,
  mlp.fc1,mlp.fc2}``, ``pos_block.i.proj.0``, ``norm``, ``head``) and shapes: no remapping is needed. Upstream's
  ``main.py`` wraps the weights as ``{"model": state_dict, ...}``, which ``load_checkpoint`` unwraps.
* ``bit_m_r50x1``: timm ``resnetv2_50x1_bit`` (seed 004, BiT-M-R50x1 fine-tuned on CIFAR-10), 10 classes,
  128x128, opset 11, ``image`` -> ``output``. Checkpoints in timm's layout or in the layout of upstream
  google-research/big_transfer ``bit_pytorch/models.py`` (see :func:`bit_upstream_to_timm_key`).

BiT stem note: the stem is conv7x7 -> zero Pad(1) -> MaxPool(3, stride 2, no padding). The conv output has no
activation, so it can be negative, and zero padding is *not* MaxPool's own (minus infinity) padding.
onnxruntime's ``Pad_Fusion`` rewrite (basic level) folds that Pad into MaxPool's ``pads`` anyway and changes the
result (by about 1 % of the logits' range on a random-init model); compare this model in onnxruntime with
``disabled_optimizers=["Pad_Fusion"]``.
"""
from __future__ import annotations

import re
from typing import Any

from torch import nn

from graphopt.core.errors import UserError
from graphopt.commands.export import Exporter, register_exporter, square_image

__all__ = [
    "create_timm_model",
    "build_vit_b32",
    "build_twins_pcpvt_s",
    "build_bit_m_r50x1",
    "bit_upstream_to_timm_key",
    "convert_bit_checkpoint",
]


def create_timm_model(name: str, **kwargs: Any) -> nn.Module:
    """timm model ``name`` with random weights (from the caller's torch seed), export-friendly layers, eval mode."""
    import timm

    with timm.layers.set_layer_config(exportable=True):
        model = timm.create_model(name, pretrained=False, **kwargs)
    return model.eval()


def build_vit_b32(num_classes: int = 1000, img_size: int = 224) -> nn.Module:
    """ViT-B/32 (timm ``vit_base_patch32_224``): patch 32, dim 768, depth 12, 12 heads (about 88.2M parameters)."""
    return create_timm_model("vit_base_patch32_224", num_classes=num_classes, img_size=img_size)


def build_twins_pcpvt_s(num_classes: int = 1000, img_size: int = 224) -> nn.Module:
    """Twins-PCPVT-S (timm ``twins_pcpvt_small`` = upstream ``pcpvt_small_v0``), about 24.1M parameters."""
    return create_timm_model("twins_pcpvt_small", num_classes=num_classes, img_size=img_size)


def build_bit_m_r50x1(num_classes: int = 10, img_size: int = 128) -> nn.Module:
    """BiT-M-R50x1 (timm ``resnetv2_50x1_bit``), CIFAR-10 head by default (about 23.5M parameters).

    The network is fully convolutional: ``img_size`` only sets the export shape (the seed uses 128).
    """
    if img_size < 32:
        raise UserError(f"bit_m_r50x1: img_size {img_size} is too small (the network downsamples 32x)")
    return create_timm_model("resnetv2_50x1_bit", num_classes=num_classes)


# Upstream BiT (bit_pytorch/models.py) names -> timm ResNetV2 names. Upstream: ``root`` (conv, pad, pool),
# ``body.block{1..4}.unit{01..}`` pre-activation bottlenecks with ``gn1 conv1 gn2 conv2 gn3 conv3`` and, in the
# first unit of each block, a ``downsample`` 1x1 StdConv2d; ``head`` = ``gn`` (+ReLU, avg pool) and a 1x1 ``conv``
# classifier. timm: ``stem.conv``, ``stages.{0..3}.blocks.{0..}`` with ``norm1 conv1 norm2 conv2 norm3 conv3``
# and ``downsample.conv``, final ``norm`` (GroupNorm + ReLU), ``head.fc`` (1x1 conv). Both put the stride on the
# 3x3 conv and feed the projection shortcut from the pre-activated input; weight standardisation eps is 1e-10
# upstream and 1e-8 in timm (negligible for trained weights).
_BIT_UNIT_KEY = re.compile(r"body\.block(\d+)\.unit(\d+)\.(gn[123]|conv[123]|downsample)\.(weight|bias)")
_BIT_UNIT_LAYER = {"gn1": "norm1", "gn2": "norm2", "gn3": "norm3",
                   "conv1": "conv1", "conv2": "conv2", "conv3": "conv3", "downsample": "downsample.conv"}
_BIT_FIXED_KEYS = {
    "root.conv.weight": "stem.conv.weight",
    "head.gn.weight": "norm.weight",
    "head.gn.bias": "norm.bias",
    "head.conv.weight": "head.fc.weight",
    "head.conv.bias": "head.fc.bias",
}


def bit_upstream_to_timm_key(key: str) -> str | None:
    """The timm name of an upstream big_transfer parameter name, or None if ``key`` is not an upstream name."""
    if key in _BIT_FIXED_KEYS:
        return _BIT_FIXED_KEYS[key]
    m = _BIT_UNIT_KEY.fullmatch(key)
    if m is None:
        return None
    block, unit, layer, param = int(m[1]), int(m[2]), m[3], m[4]
    if block < 1 or unit < 1:
        return None
    return f"stages.{block - 1}.blocks.{unit - 1}.{_BIT_UNIT_LAYER[layer]}.{param}"


def _is_bit_upstream_key(key: str) -> bool:
    return key.startswith(("root.", "body.", "head.gn.", "head.conv."))


def convert_bit_checkpoint(state: dict) -> dict:
    """Map an upstream big_transfer state dict onto timm's ResNetV2; a timm-layout state dict passes unchanged."""
    if not any(_is_bit_upstream_key(k) for k in state):
        return state
    out: dict = {}
    unknown = []
    for key, value in state.items():
        new = bit_upstream_to_timm_key(key)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        shown = ", ".join(unknown[:6]) + (f", ... ({len(unknown)} in all)" if len(unknown) > 6 else "")
        raise UserError(f"bit_m_r50x1: checkpoint looks like upstream big_transfer's layout (root./body./head.) "
                        f"but these keys are not part of it: {shown}")
    return out


register_exporter(Exporter(
    name="vit_b32",
    build=build_vit_b32,
    input_name="input",
    output_names=("output",),
    opset=11,
    input_size=square_image(224),
    description="ViT-B/32 (timm vit_base_patch32_224), timm key layout",
    convert_checkpoint=None,
    default_args={},
))

register_exporter(Exporter(
    name="twins_pcpvt_s",
    build=build_twins_pcpvt_s,
    input_name="input",
    output_names=("output",),
    opset=11,
    input_size=square_image(224),
    description="Twins-PCPVT-S (timm twins_pcpvt_small); upstream pcpvt_small_v0 keys load as they are",
    convert_checkpoint=None,  # upstream's key layout is timm's (see the module docstring)
    default_args={},
))

register_exporter(Exporter(
    name="bit_m_r50x1",
    build=build_bit_m_r50x1,
    input_name="image",
    output_names=("output",),
    opset=11,
    input_size=square_image(128),
    description="BiT-M-R50x1 (timm resnetv2_50x1_bit), 10 classes, 128 px; timm or upstream big_transfer keys",
    convert_checkpoint=convert_bit_checkpoint,
    default_args={},
))
