"""LV-ViT-S (TokenLabeling, Jiang et al. 2021): our own PyTorch definition, registered as exporter ``lvvit_s``.

The module and parameter names follow the upstream TokenLabeling repository (``tlt/models/lvvit.py`` and
``tlt/models/layers.py`` in zihangJiang/TokenLabeling), so the published ``lvvit_s-26M-224-83.3.pth.tar`` state
dict loads with ``strict=True`` and no key remapping:

* ``patch_embed.conv1`` / ``bn1`` / ``conv2`` / ``bn2`` / ``conv3`` / ``bn3`` / ``proj``: the "4_2" stem
  (conv7x7 s2, two conv3x3, each followed by BatchNorm and ReLU, then an 8x8 stride-8 projection);
* ``cls_token``, ``pos_embed``;
* ``blocks.N.norm1``, ``blocks.N.attn.qkv`` (no bias), ``blocks.N.attn.proj``, ``blocks.N.norm2``,
  ``blocks.N.mlp.fc1``, ``blocks.N.mlp.fc2``;
* ``norm``, ``head`` (class token) and ``aux_head`` (patch tokens).

Only inference is modelled: no dropout, drop-path or MixToken. In eval mode the output is
``head(cls) + 0.5 * max over patch tokens of aux_head(patches)``, as upstream. The attention softmax is written
as upstream writes it (``attn.softmax(dim=-1)`` on the (B, heads, N, N) scores); rewriting it for the target is
the job of graphopt's ``softmax_transpose`` pass, not of this source.
"""
from __future__ import annotations

import torch
from torch import nn

from graphopt.commands.export import Exporter, register_exporter, square_image

__all__ = ["LVViT", "build_lvvit_s"]


class PatchEmbed4x2(nn.Module):
    """The "4_2" convolutional stem: 224x224 image -> (B, embed_dim, 14, 14)."""

    def __init__(self, in_chans: int = 3, embed_dim: int = 384, patch_size: int = 16, stem_dim: int = 64,
                 img_size: int = 224) -> None:
        super().__init__()
        self.num_patches = (img_size // patch_size) ** 2
        self.conv1 = nn.Conv2d(in_chans, stem_dim, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_dim)
        self.conv2 = nn.Conv2d(stem_dim, stem_dim, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(stem_dim)
        self.conv3 = nn.Conv2d(stem_dim, stem_dim, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(stem_dim)
        self.relu = nn.ReLU()
        # The 7x7 stem halves the resolution, so the projection covers the other half of the patch size.
        k = patch_size // 2
        self.proj = nn.Conv2d(stem_dim, embed_dim, kernel_size=k, stride=k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.relu(self.bn3(self.conv3(x)))
        return self.proj(x)


class Attention(nn.Module):
    """Multi-head self-attention; queries are scaled before the product, as upstream."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (B, heads, N, head_dim)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block whose residual branches are divided by ``skip_lam``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, skip_lam: float) -> None:
        super().__init__()
        self.skip_lam = skip_lam
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x)) / self.skip_lam
        x = x + self.mlp(self.norm2(x)) / self.skip_lam
        return x


class LVViT(nn.Module):
    """LV-ViT with the "4_2" stem and the dense auxiliary head (inference only)."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: int = 384, depth: int = 16, num_heads: int = 6, mlp_ratio: float = 3.0,
                 skip_lam: float = 2.0) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed4x2(in_chans, embed_dim, patch_size, img_size=img_size)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, skip_lam) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.aux_head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

        # Same scheme as upstream: truncated normal (std .02) for tokens, positions and linear weights, zero
        # biases, unit LayerNorms; convolutions and BatchNorms keep PyTorch's defaults.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image -> normalised tokens (B, 1 + num_patches, embed_dim), class token first."""
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        x_cls = self.head(x[:, 0])
        x_aux = self.aux_head(x[:, 1:])
        return x_cls + 0.5 * x_aux.max(dim=1)[0]


def build_lvvit_s(num_classes: int = 1000, img_size: int = 224) -> LVViT:
    """LV-ViT-S: patch 16, dim 384, depth 16, 6 heads, MLP ratio 3, skip_lam 2 (about 26.2M parameters)."""
    model = LVViT(img_size=img_size, patch_size=16, num_classes=num_classes, embed_dim=384, depth=16,
                  num_heads=6, mlp_ratio=3.0, skip_lam=2.0)
    return model.eval()


register_exporter(Exporter(
    name="lvvit_s",
    build=build_lvvit_s,
    input_name="image",
    output_names=("features",),
    opset=13,
    input_size=square_image(224),
    description="LV-ViT-S (TokenLabeling), our definition, upstream key layout",
    convert_checkpoint=None,  # keys already match upstream's state dict
    default_args={},
))
