"""The GroupViT grouping block (OVSegmentor's "slot-attention binding module", paper section 3.1).

OVSegmentor uses GroupViT's block unchanged (author, OVSegmentor#5): learnable group tokens are mixed by a
token-MLP into the output groups, refined by a post-norm cross-attention over the image tokens, and then
every image token is assigned to exactly one group by a single-head attention whose softmax runs over the
GROUP axis. Training uses a Gumbel-softmax with a hard one-hot (straight-through gradients; without the noise
when ``gumbel`` is off); inference uses the noise-free argmax. Dividing by (sum + 1) makes each group a mean pool of its tokens (assign_eps = 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.layers import Mlp
from torch import nn

from .layers import CrossAttnBlock


def gumbel_softmax(logits: torch.Tensor, tau: float = 1.0, hard: bool = True, dim: int = -1) -> torch.Tensor:
    """Gumbel(0, 1)-perturbed softmax; with ``hard`` a one-hot forward and the soft gradient backward."""
    gumbels = -torch.empty_like(logits, memory_format=torch.legacy_contiguous_format).exponential_().log()
    y_soft = ((logits + gumbels) / tau).softmax(dim)
    return straight_through(y_soft, dim) if hard else y_soft


def hard_softmax(logits: torch.Tensor, dim: int) -> torch.Tensor:
    """Noise-free one-hot argmax with straight-through gradients of the softmax."""
    return straight_through(logits.softmax(dim), dim)


def straight_through(y_soft: torch.Tensor, dim: int) -> torch.Tensor:
    index = y_soft.argmax(dim, keepdim=True)
    y_hard = torch.zeros_like(y_soft).scatter_(dim, index, 1.0)
    return y_hard - y_soft.detach() + y_soft


@dataclass
class GroupAttention:
    """What one grouping block tells the rest of the model about its assignment."""

    soft: torch.Tensor  # (B, G, N) plain softmax over groups: the maps used for zero-shot segmentation
    hard: torch.Tensor  # (B, G, N) the assignment actually used to pool (one-hot per token)
    q: torch.Tensor  # (B, G, D) group queries: cross-image masks read other images with them
    k: torch.Tensor  # (B, N, D) token keys


class AssignAttention(nn.Module):
    """Single-head attention from groups (queries) to tokens (keys), normalised over groups."""

    def __init__(self, dim: int, qkv_bias: bool = True, hard: bool = True, gumbel_tau: float = 1.0,
                 assign_eps: float = 1.0, gumbel: bool = True, center_keys: bool = False):
        super().__init__()
        self.center_keys = center_keys
        self.scale = dim ** -0.5
        self.q_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.hard = hard
        self.gumbel = gumbel
        self.gumbel_tau = gumbel_tau
        self.assign_eps = assign_eps

    def logits(self, groups: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(assignment logits (B, G, N) before any noise, queries (B, G, D), keys (B, N, D))."""
        q, k = self.q_proj(groups), self.k_proj(tokens)  # (B,G,D) (B,N,D)
        if self.center_keys:
            # each token competes on how it differs from the image's mean token: a group that matches what all
            # tokens share gains the same on every token and cannot take the whole image for it
            k = k - k.mean(1, keepdim=True)
        return q @ k.transpose(1, 2) * self.scale, q, k

    def forward(self, groups: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, GroupAttention]:
        raw, q, k = self.logits(groups, tokens)  # (B, G, N)
        v = self.v_proj(tokens)  # (B, N, D)
        if self.hard and self.training and self.gumbel:
            assign = gumbel_softmax(raw, self.gumbel_tau, hard=True, dim=1)
        elif self.hard:
            assign = hard_softmax(raw, dim=1)
        else:
            assign = raw.softmax(dim=1)
        pooled = assign / (assign.sum(dim=-1, keepdim=True) + self.assign_eps)  # mean pool over each group's tokens
        out = self.proj(pooled @ v)  # (B, G, D)
        return out, GroupAttention(soft=raw.softmax(dim=1), hard=assign, q=q, k=k)


class GroupingBlock(nn.Module):
    """Tokens (B, N, D) + group tokens (B, S, D) -> grouped tokens (B, G, out_dim)."""

    def __init__(self, dim: int, out_dim: int, num_heads: int, num_group_tokens: int, num_output_groups: int,
                 hard: bool = True, gumbel_tau: float = 1.0, assign_eps: float = 1.0, norm_eps: float = 1e-5,
                 gumbel: bool = True, group_residual: bool = True, center_keys: bool = False,
                 group_residual_drop: float = 0.0, pooled_norm: bool = False):
        super().__init__()
        self.group_residual = group_residual
        self.group_residual_drop = group_residual_drop
        self.norm_tokens = nn.LayerNorm(dim, eps=norm_eps)
        # token-mixing MLP: S group tokens -> G output groups, hidden width D/2 (GroupViT mlp_ratio (0.5, 4))
        self.mlp_inter = Mlp(num_group_tokens, int(0.5 * dim), num_output_groups)
        self.norm_post_tokens = nn.LayerNorm(dim, eps=norm_eps)
        self.norm_x = nn.LayerNorm(dim, eps=norm_eps)
        self.pre_assign_attn = CrossAttnBlock(dim, num_heads, mlp_ratio=4.0, post_norm=True, norm_eps=norm_eps)
        self.assign = AssignAttention(dim, hard=hard, gumbel_tau=gumbel_tau, assign_eps=assign_eps, gumbel=gumbel,
                                      center_keys=center_keys)
        self.norm_pooled = nn.LayerNorm(dim, eps=norm_eps) if pooled_norm else None
        self.norm_new_x = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp_channels = Mlp(dim, 4 * dim, out_dim)
        self.reduction = nn.Linear(dim, out_dim, bias=False) if out_dim != dim else nn.Identity()

    def forward(self, x: torch.Tensor, group_tokens: torch.Tensor) -> tuple[torch.Tensor, GroupAttention]:
        group_tokens = self.norm_tokens(group_tokens)
        x = self.norm_x(x)
        groups = self.norm_post_tokens(self.mlp_inter(group_tokens.transpose(1, 2)).transpose(1, 2))  # (B, G, D)
        groups = self.pre_assign_attn(groups, x)
        new_x, attn = self.assign(groups, x)
        if self.norm_pooled is not None:  # the assigned tokens weigh as much as the image-wide query from the start
            new_x = self.norm_pooled(new_x)
        if self.group_residual:  # GroupViT: each group adds its (image-wide) cross-attended query to its pooled tokens
            if self.training and self.group_residual_drop > 0:
                # left out for some images: their groups must mean what their own tokens show
                keep = torch.rand(x.shape[0], 1, 1, device=x.device) >= self.group_residual_drop
                groups = groups * keep.to(groups.dtype)
            new_x = new_x + groups
        new_x = self.reduction(new_x) + self.mlp_channels(self.norm_new_x(new_x))
        return new_x, attn


def flat_assignment(attns: list[GroupAttention], kind: str = "soft") -> torch.Tensor:
    """Compose the per-stage maps into final-group x patch probabilities (B, G_last, N_patches)."""
    out = getattr(attns[0], kind)
    for a in attns[1:]:
        out = getattr(a, kind) @ out  # (B, G_i, G_{i-1}) @ (B, G_{i-1}, N)
    return out
