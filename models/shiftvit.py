"""ShiftViT Shift-T/light (SPACH ``shiftvit_light_tiny``), written for graphopt.

ShiftViT ("When Shift Operation Meets Vision Transformer", Wang et al., AAAI 2022) replaces attention with a
parameter-free shift of a few channel groups, followed by a norm + MLP residual branch. Shift-T/light is
``embed_dim=96, depths=(2, 2, 6, 2), mlp_ratio=4, n_div=12`` with GroupNorm(num_groups=1) and GELU.

Two things are deliberately kept exactly as upstream (github.com/microsoft/SPACH, ``models/shiftvit.py``):

* the module/parameter names, so the released ``shiftvit_tiny_light.pth`` loads with ``strict=True``::

      patch_embed.proj.{weight,bias}            Conv2d(3, 96, 4, stride=4)
      patch_embed.norm.{weight,bias}            GroupNorm(1, 96)
      layers.{i}.blocks.{j}.norm2.{weight,bias} GroupNorm(1, C)   (a block has no norm1: the shift has no params)
      layers.{i}.blocks.{j}.mlp.fc1.{weight,bias}  Conv2d(C, 4C, 1)
      layers.{i}.blocks.{j}.mlp.fc2.{weight,bias}  Conv2d(4C, C, 1)
      layers.{i}.downsample.norm.{weight,bias}  GroupNorm(1, C)   (stages 0-2; norm *before* the reduction)
      layers.{i}.downsample.reduction.weight    Conv2d(C, 2C, 2, stride=2, bias=False)
      norm.{weight,bias}                        GroupNorm(1, 768)
      head.{weight,bias}                        Linear(768, num_classes)

* the shift itself: in-place slice assignment into a ``torch.zeros_like(x)`` buffer (:func:`shift_feat`). The
  TorchScript ONNX exporter turns each assignment into a ScatterND, which is the pattern graphopt's
  ``replace_shift_scatter`` pass rewrites; the source is not "fixed" here on purpose.

The exported tail is ``... Add (residual) -> GroupNorm [InstanceNormalization, Mul, Add] -> GlobalAveragePool
-> Flatten -> Gemm``, as upstream's.
"""
from __future__ import annotations

import torch
from torch import nn

from graphopt.commands.export import Exporter, register_exporter, square_image

__all__ = [
    "shift_feat",
    "ShiftModule",
    "GroupNorm",
    "Mlp",
    "ShiftViTBlock",
    "PatchMerging",
    "BasicLayer",
    "PatchEmbed",
    "ShiftViT",
    "build_shiftvit_t_light",
]


def shift_feat(x: torch.Tensor, n_div: int) -> torch.Tensor:
    """Shift four channel groups of a (B, C, H, W) tensor by one pixel, the upstream in-place way.

    With ``g = C // n_div``: channels [0, g) move left one column, [g, 2g) right, [2g, 3g) up one row,
    [3g, 4g) down; the remaining channels are copied unchanged; vacated border cells are zero.
    """
    _, c, _, _ = x.shape
    g = c // n_div
    out = torch.zeros_like(x)
    out[:, 0 * g:1 * g, :, :-1] = x[:, 0 * g:1 * g, :, 1:]  # left
    out[:, 1 * g:2 * g, :, 1:] = x[:, 1 * g:2 * g, :, :-1]  # right
    out[:, 2 * g:3 * g, :-1, :] = x[:, 2 * g:3 * g, 1:, :]  # up
    out[:, 3 * g:4 * g, 1:, :] = x[:, 3 * g:4 * g, :-1, :]  # down
    out[:, 4 * g:, :, :] = x[:, 4 * g:, :, :]  # unshifted rest
    return out


class ShiftModule(nn.Module):
    """``shift_feat`` as a module (no parameters), for building small test graphs with any ``n_div``."""

    def __init__(self, n_div: int = 12) -> None:
        super().__init__()
        if n_div < 4:
            raise ValueError(f"n_div must be >= 4 (four shifted groups), got {n_div}")
        self.n_div = int(n_div)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return shift_feat(x, self.n_div)

    def extra_repr(self) -> str:
        return f"n_div={self.n_div}"


class GroupNorm(nn.GroupNorm):
    """GroupNorm with one group: LayerNorm over (C, H, W) for NCHW tensors. Keys: ``weight``, ``bias``."""

    def __init__(self, num_channels: int, num_groups: int = 1) -> None:
        super().__init__(num_groups, num_channels)


class DropPath(nn.Module):
    """Stochastic depth per sample (identity in eval mode; has no parameters)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class Mlp(nn.Module):
    """Channel MLP on NCHW data: 1x1 conv -> GELU -> 1x1 conv (keys ``fc1``, ``fc2``)."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(in_features, hidden_features, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden_features, in_features, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class ShiftViTBlock(nn.Module):
    """x = shift(x); x = x + MLP(GN(x)). Only ``norm2`` and ``mlp`` carry parameters (upstream naming)."""

    def __init__(self, dim: int, n_div: int = 12, mlp_ratio: float = 4.0, drop: float = 0.0,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.dim = dim
        self.n_div = n_div
        self.norm2 = GroupNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    shift_feat = staticmethod(shift_feat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.shift_feat(x, self.n_div)
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, n_div={self.n_div}"


class PatchMerging(nn.Module):
    """Downsampling between stages: GN, then a 2x2 stride-2 conv doubling channels, no bias."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        # Registered in upstream's order (reduction, then norm) so state-dict key order matches too.
        self.reduction = nn.Conv2d(dim, 2 * dim, kernel_size=2, stride=2, bias=False)
        self.norm = GroupNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduction(self.norm(x))


class BasicLayer(nn.Module):
    """One stage: ``blocks`` then an optional ``downsample`` (None for the last stage, as upstream)."""

    def __init__(self, dim: int, depth: int, n_div: int, mlp_ratio: float, drop: float,
                 drop_path: list[float], downsample: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            ShiftViTBlock(dim, n_div=n_div, mlp_ratio=mlp_ratio, drop=drop, drop_path=drop_path[i])
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        if self.downsample is not None:
            x = self.downsample(x)
        return x


class PatchEmbed(nn.Module):
    """Non-overlapping patch_size x patch_size conv, then GN (keys ``proj``, ``norm``)."""

    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = GroupNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class ShiftViT(nn.Module):
    """ShiftViT with upstream's key layout; GN1 norm and GELU only (the released light/r2 checkpoints)."""

    def __init__(self, n_div: int = 12, img_size: int = 224, patch_size: int = 4, in_chans: int = 3,
                 num_classes: int = 1000, embed_dim: int = 96, depths: tuple[int, ...] = (2, 2, 6, 2),
                 mlp_ratio: float = 4.0, drop_rate: float = 0.0, drop_path_rate: float = 0.2) -> None:
        super().__init__()
        if img_size % (patch_size * 2 ** (len(depths) - 1)):
            raise ValueError(f"img_size {img_size} must be a multiple of {patch_size * 2 ** (len(depths) - 1)}")
        self.num_classes = num_classes
        self.num_layers = len(depths)
        self.num_features = int(embed_dim * 2 ** (self.num_layers - 1))

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            self.layers.append(BasicLayer(
                dim=int(embed_dim * 2 ** i), depth=depth, n_div=n_div, mlp_ratio=mlp_ratio, drop=drop_rate,
                drop_path=dpr[start:start + depth], downsample=i < self.num_layers - 1))
        self.norm = GroupNorm(self.num_features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pos_drop(self.patch_embed(x))
        for layer in self.layers:
            x = layer(x)
        x = self.norm(x)
        x = self.avgpool(x)
        return torch.flatten(x, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def build_shiftvit_t_light(num_classes: int = 1000, img_size: int = 224, n_div: int = 12) -> nn.Module:
    """Shift-T/light (upstream ``shiftvit_light_tiny``), random init from the caller's torch seed, eval mode."""
    model = ShiftViT(n_div=n_div, img_size=img_size, num_classes=num_classes, embed_dim=96,
                     depths=(2, 2, 6, 2), mlp_ratio=4.0, drop_path_rate=0.2)
    return model.eval()


register_exporter(Exporter(
    name="shiftvit_t_light",
    build=build_shiftvit_t_light,
    input_name="input",
    output_names=("output",),
    opset=12,
    input_size=square_image(224),
    description="ShiftViT Shift-T/light (SPACH), upstream in-place shift, upstream key layout",
    convert_checkpoint=None,
    default_args={},
))
