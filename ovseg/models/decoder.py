"""Masked-entity-completion decoder (OVSegmentor section 3.2; reference section 4.3).

The caption with its entity words replaced by [MASK] is encoded by the text tower; its tokens then attend to
the image's group tokens (post-norm cross-attention) and to each other (self-attention), and the [CLS] output
must retrieve the sentence that names the masked entities. Unlike the released code, the self-attention
honours the padding mask, so the output does not depend on what sits in padded positions.
"""

from __future__ import annotations

from functools import partial

import torch
from timm.models.vision_transformer import Block
from torch import nn

from .layers import CrossAttnBlock


class EntityDecoder(nn.Module):
    def __init__(self, text_dim: int, vision_dim: int, num_heads: int, depth: int = 1, norm_eps: float = 1e-5):
        super().__init__()
        norm = partial(nn.LayerNorm, eps=norm_eps)
        self.norm_text = norm(text_dim)
        self.norm_groups = norm(vision_dim)
        self.cross = nn.ModuleList(
            CrossAttnBlock(text_dim, num_heads, post_norm=True, norm_eps=norm_eps, kv_dim=vision_dim)
            for _ in range(depth))
        self.self_attn = nn.ModuleList(
            Block(text_dim, num_heads, qkv_bias=True, norm_layer=norm) for _ in range(depth))
        self.norm = norm(text_dim)

    def forward(self, text_tokens: torch.Tensor, text_mask: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        # text_tokens (B, L, Dt), text_mask (B, L) 1 = real token, groups (B, G, Dv) -> (B, Dt) at [CLS]
        x, g = self.norm_text(text_tokens), self.norm_groups(groups)
        # additive mask so that padded keys get zero weight in both timm attention paths
        bias = torch.zeros(text_mask.shape, dtype=x.dtype, device=x.device)
        bias = bias.masked_fill(text_mask == 0, float("-inf"))[:, None, None, :]  # (B, 1, 1, L)
        for cross, block in zip(self.cross, self.self_attn):
            x = cross(x, g)
            x = block(x, attn_mask=bias)
        return self.norm(x)[:, 0]
