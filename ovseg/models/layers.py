"""Small building blocks shared by the vision tower, the grouping block and the entity decoder.

Cross-attention with separate q/k/v projections (GroupViT's ``qkv_fuse=False``), the post-norm
cross-attention block, and the 2-layer BatchNorm projection head (GroupViT ``ProjectMLP``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import nn


class CrossAttention(nn.Module):
    """Multi-head attention of ``query`` tokens over ``key`` tokens (values = keys)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, kv_dim: int | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        kv_dim = kv_dim or dim
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.k_proj = nn.Linear(kv_dim, dim, bias=qkv_bias)
        self.v_proj = nn.Linear(kv_dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, key: torch.Tensor, key_padding_mask: torch.Tensor | None = None):
        # query (B, Nq, D), key (B, Nk, Dk); key_padding_mask (B, Nk) True = attend
        B, Nq, D = query.shape
        h = self.num_heads

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(B, -1, h, D // h).transpose(1, 2)  # (B, h, N, D/h)

        q, k, v = heads(self.q_proj(query)), heads(self.k_proj(key)), heads(self.v_proj(key))
        mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :].bool()
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(B, Nq, D))


class CrossAttnBlock(nn.Module):
    """``x = q + attn(q, kv); x = x + mlp(norm(x)); x = norm_post(x)``: GroupViT's post-norm variant.

    With ``post_norm`` the inputs are expected to be normalised by the caller (as in the grouping block).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0, post_norm: bool = True, norm_eps: float = 1e-5, kv_dim: int | None = None):
        super().__init__()
        self.norm_q = nn.Identity() if post_norm else nn.LayerNorm(dim, eps=norm_eps)
        self.norm_k = nn.Identity() if post_norm else nn.LayerNorm(kv_dim or dim, eps=norm_eps)
        self.attn = CrossAttention(dim, num_heads, qkv_bias, kv_dim=kv_dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_post = nn.LayerNorm(dim, eps=norm_eps) if post_norm else nn.Identity()

    def forward(self, query, key, key_padding_mask=None):
        x = query + self.drop_path(self.attn(self.norm_q(query), self.norm_k(key), key_padding_mask))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return self.norm_post(x)


class ProjectMLP(nn.Module):
    """Linear -> BatchNorm -> ReLU -> ... -> Linear, on (N, D) or (B, N, D) inputs (GroupViT ProjectMLP).

    Token inputs (B, N, D) are normalised over all B*N tokens, as the released code does with its 1x1 convs.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2):
        super().__init__()
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers += [nn.Linear(dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            B, N, D = x.shape
            return self.net(x.reshape(B * N, D)).reshape(B, N, -1)
        return self.net(x)
