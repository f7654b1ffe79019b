"""GroupViT vision tower (GroupViT, CVPR 2022; OVSegmentor section 3.1).

patch embedding + positional embedding -> stages. A stage runs ViT blocks over [tokens, group tokens]; every
stage but the last ends in a grouping block that turns its tokens into fewer, grouped tokens. OVSegmentor:
one grouping stage (196 patches, 64 group tokens -> 8 groups) between two stages of 6 blocks. GroupViT:
two grouping stages (64 -> 64, then 8 -> 8). The final tokens are layer-normalised; their mean is the image.

The positional embedding is learned for the training grid and bicubically resized for any other input size.
Block parameter names follow timm/DINO (``patch_embed.proj``, ``blocks.*.attn.qkv``...) so that a DINO
checkpoint maps onto the stages (see ``pretrained.py``). Options for the other pretrained ViTs, each off by
default: a LayerNorm before the first block (CLIP's ``ln_pre``), QuickGELU (OpenAI's CLIP), LayerScale and
register tokens (DINOv2); registers join every block of every stage and are never grouped.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from timm.layers import Mlp, PatchEmbed, QuickGELU, resample_abs_pos_embed, trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from ..config import VisionConfig
from .grouping import GroupAttention, GroupingBlock

# the blocks' MLP activation (config model.vision.act); QuickGELU is x * sigmoid(1.702 x), OpenAI CLIP's
ACTIVATIONS = {"gelu": nn.GELU, "quick_gelu": QuickGELU}


@dataclass
class VisionOutput:
    tokens: torch.Tensor  # (B, G, D) final grouped tokens after the final LayerNorm
    attns: list[GroupAttention]  # one per grouping block, first stage first
    grid: tuple[int, int]  # patch grid (h, w) of this input


class MixerMlp(Mlp):
    """An MLP over the token axis: (B, S, D) -> (B, S', D)."""

    def forward(self, x):
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class ConvStem(nn.Module):
    """Tokens from a small CNN: (B, 3, H, W) -> (B, H/p * W/p, D), the grid a patch-p embedding gives.

    log2(p) 3x3 stride-2 convolutions (BatchNorm, ReLU; widths doubling up to D) and a 1x1 projection.
    Like the patch embedding, pixels beyond the last full patch are dropped.
    """

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3):
        super().__init__()
        n = patch_size.bit_length() - 1
        if patch_size < 2 or 1 << n != patch_size:
            raise ValueError(f"the convolutional stem needs a power-of-two patch_size >= 2, got {patch_size}")
        self.patch_size = patch_size
        widths = [max(embed_dim >> (n - 1 - i), 8) for i in range(n)]  # ..., D/4, D/2, D
        layers: list[nn.Module] = []
        prev = in_chans
        for w in widths:
            layers += [nn.Conv2d(prev, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            prev = w
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Conv2d(prev, embed_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        x = x[..., :x.shape[-2] // p * p, :x.shape[-1] // p * p]
        return self.proj(self.convs(x)).flatten(2).transpose(1, 2)


class GroupingStage(nn.Module):
    def __init__(self, cfg: VisionConfig, index: int, drop_path: list[float]):
        super().__init__()
        dim, n_tok = cfg.embed_dim, cfg.num_group_tokens[index]
        norm = partial(nn.LayerNorm, eps=cfg.norm_eps)
        if cfg.act not in ACTIVATIONS:
            raise ValueError(f"model.vision.act must be one of {sorted(ACTIVATIONS)}, got {cfg.act!r}")
        self.blocks = nn.ModuleList(
            Block(dim, cfg.num_heads[index], cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, drop_path=dp, norm_layer=norm,
                  init_values=cfg.layer_scale, act_layer=ACTIVATIONS[cfg.act])
            for dp in drop_path
        )
        self.group_token = nn.Parameter(torch.zeros(1, n_tok, dim)) if n_tok else None
        # a later stage's group tokens also receive a token-mixed projection of the previous stage's tokens;
        # those stages start their own tokens at zero (GroupViT zero_init_group_token)
        prev = cfg.num_group_tokens[index - 1] if index > 0 else 0
        self.group_projector = None
        if n_tok and prev:
            self.group_projector = nn.Sequential(norm(dim), MixerMlp(prev, dim // 2, n_tok))
        elif n_tok:
            trunc_normal_(self.group_token, std=0.02)
        self.downsample = None
        if index < len(cfg.depths) - 1:
            self.downsample = GroupingBlock(
                dim, dim, cfg.num_heads[index], n_tok, cfg.num_output_groups[index], hard=cfg.hard_assignment,
                gumbel_tau=cfg.gumbel_tau, assign_eps=cfg.assign_eps, norm_eps=cfg.norm_eps,
                gumbel=cfg.gumbel, group_residual=cfg.group_residual,
                center_keys=cfg.center_keys, group_residual_drop=cfg.group_residual_drop,
                pooled_norm=cfg.pooled_norm)

    def forward(self, x: torch.Tensor, prev_group: torch.Tensor | None, registers: torch.Tensor | None = None):
        """[tokens, registers, group tokens] through the blocks; the tokens (only) are then grouped."""
        B, N, _ = x.shape
        R = 0 if registers is None else registers.shape[1]
        parts = [x] if registers is None else [x, registers]
        group = None
        if self.group_token is not None:
            group = self.group_token.expand(B, -1, -1)
            if self.group_projector is not None:
                group = group + self.group_projector(prev_group)
            parts.append(group)
        x = torch.cat(parts, dim=1) if len(parts) > 1 else x
        for blk in self.blocks:
            x = blk(x)
        x, registers, group = x[:, :N], (x[:, N:N + R] if R else registers), x[:, N + R:]
        attn = None
        if self.downsample is not None:
            x, attn = self.downsample(x, group)
        return x, group, attn, registers


class GroupViT(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        n = len(cfg.depths)
        if not (len(cfg.num_heads) == len(cfg.num_group_tokens) == n and len(cfg.num_output_groups) == n - 1):
            raise ValueError(
                f"vision config: depths {cfg.depths}, num_heads {cfg.num_heads} and num_group_tokens "
                f"{cfg.num_group_tokens} need one entry per stage and num_output_groups {cfg.num_output_groups} "
                "one per grouping block (stages - 1)")
        if n < 2 or cfg.num_group_tokens[-1] != 0 or 0 in cfg.num_group_tokens[:-1]:
            raise ValueError("vision config: every stage but the last needs group tokens; the last has none")
        if cfg.img_size % cfg.patch_size:
            raise ValueError(f"img_size {cfg.img_size} is not a multiple of patch_size {cfg.patch_size}")
        self.cfg = cfg
        self.embed_dim = cfg.embed_dim
        self.num_groups = cfg.num_output_groups[-1]
        self.patch_size = cfg.patch_size
        self.grid = (cfg.img_size // cfg.patch_size,) * 2
        if cfg.stem == "patch":
            self.patch_embed = PatchEmbed(
                cfg.img_size, cfg.patch_size, 3, cfg.embed_dim, strict_img_size=False,
                norm_layer=partial(nn.LayerNorm, eps=cfg.norm_eps) if cfg.patch_norm else None)
        elif cfg.stem == "conv":
            self.patch_embed = ConvStem(cfg.patch_size, cfg.embed_dim)
            if cfg.patch_norm:
                self.patch_embed = nn.Sequential(self.patch_embed, nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps))
        else:
            raise ValueError(f"vision config: stem must be 'patch' or 'conv', got {cfg.stem!r}")
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], cfg.embed_dim))
        trunc_normal_(self.pos_embed, std=0.02)
        self.pre_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps) if cfg.pre_norm else None
        self.register_tokens = None
        if cfg.num_registers:  # DINOv2 starts its registers at N(0, 1e-6) (dinov2/models/vision_transformer.py)
            self.register_tokens = nn.Parameter(torch.zeros(1, cfg.num_registers, cfg.embed_dim))
            nn.init.normal_(self.register_tokens, std=1e-6)
        total = sum(cfg.depths)
        dpr = [cfg.drop_path_rate * i / max(total - 1, 1) for i in range(total)]  # linear, as in timm
        starts = [sum(cfg.depths[:i]) for i in range(n)]
        self.layers = nn.ModuleList(
            GroupingStage(cfg, i, dpr[starts[i]:starts[i] + cfg.depths[i]]) for i in range(n))
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.apply(_init_weights)

    def pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor:
        if grid == self.grid:
            return self.pos_embed
        return resample_abs_pos_embed(self.pos_embed, list(grid), list(self.grid), num_prefix_tokens=0,
                                      interpolation="bicubic", antialias=False)

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, 3, H, W) -> the tokens the first block sees (B, h*w, D), and the grid (h, w)."""
        grid = (images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)
        x = self.patch_embed(images)  # (B, h*w, D)
        x = x + self.pos_embed_for(grid)
        if self.pre_norm is not None:
            x = self.pre_norm(x)
        return x, grid

    def forward(self, images: torch.Tensor) -> VisionOutput:
        x, grid = self.embed(images)
        registers = None if self.register_tokens is None else self.register_tokens.expand(x.shape[0], -1, -1)
        group, attns = None, []
        for layer in self.layers:
            x, group, attn, registers = layer(x, group, registers)
            if attn is not None:
                attns.append(attn)
        return VisionOutput(tokens=self.norm(x), attns=attns, grid=grid)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
