"""The GroupViT grouping block: hard one-hot assignment over groups, straight-through gradients, mean pooling."""

import torch

from ovseg.config import load_config
from ovseg.models.grouping import AssignAttention, GroupingBlock, flat_assignment, gumbel_softmax
from ovseg.models.vision import GroupViT


def _assign(dim=16, eps=1.0):
    return AssignAttention(dim, hard=True, gumbel_tau=1.0, assign_eps=eps)


def test_training_assignment_is_one_hot_over_groups_and_passes_gradients():
    m = _assign().train()
    groups = torch.randn(2, 4, 16, requires_grad=True)
    tokens = torch.randn(2, 10, 16, requires_grad=True)
    out, attn = m(groups, tokens)
    hard = attn.hard.detach()
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(hard.sum(1), torch.ones(2, 10))  # each token belongs to exactly one group
    out.square().sum().backward()
    # q_proj only reaches the output through the assignment: a gradient there is the straight-through path
    assert m.q_proj.weight.grad.abs().sum() > 0 and m.k_proj.weight.grad.abs().sum() > 0
    assert groups.grad.abs().sum() > 0 and tokens.grad.abs().sum() > 0


def test_eval_assignment_is_noise_free_argmax_of_the_soft_map():
    m = _assign().eval()
    groups, tokens = torch.randn(1, 4, 16), torch.randn(1, 10, 16)
    (o1, a1), (o2, a2) = m(groups, tokens), m(groups, tokens)
    assert torch.equal(o1, o2)
    assert torch.equal(a1.hard.argmax(1), a1.soft.argmax(1))
    assert torch.allclose(a1.soft.sum(1), torch.ones(1, 10))


def test_without_gumbel_training_assigns_by_the_plain_argmax_and_still_passes_gradients():
    torch.manual_seed(0)
    m = AssignAttention(16, hard=True, gumbel_tau=1.0, assign_eps=1.0, gumbel=False).train()
    groups = torch.randn(2, 4, 16, requires_grad=True)
    tokens = torch.randn(2, 10, 16, requires_grad=True)
    (o1, a1), (o2, a2) = m(groups, tokens), m(groups, tokens)
    assert torch.equal(o1, o2)  # no noise: the same input pools the same way every time
    raw = m.q_proj(groups) @ m.k_proj(tokens).transpose(1, 2) * 16 ** -0.5
    assert torch.equal(a1.hard.detach().argmax(1), raw.argmax(1))
    with_noise = AssignAttention(16, hard=True, gumbel_tau=1.0, assign_eps=1.0).train()
    with_noise.load_state_dict(m.state_dict())
    assert any(not torch.equal(with_noise(groups, tokens)[1].hard.argmax(1), raw.argmax(1)) for _ in range(20))
    o1.square().sum().backward()
    assert m.q_proj.weight.grad.abs().sum() > 0  # straight-through: the assignment's logits get a gradient
    vis = GroupViT(load_config("debug", ["model.vision.gumbel=false"]).model.vision)
    assert all(not blk.downsample.assign.gumbel for blk in vis.layers if blk.downsample is not None)


def test_assign_eps_one_is_a_mean_pool_written_by_hand():
    m = _assign(dim=8).eval()
    groups, tokens = torch.randn(1, 3, 8), torch.randn(1, 7, 8)
    out, attn = m(groups, tokens)
    v = m.v_proj(tokens)[0]
    owner = attn.hard[0].argmax(0)  # group of each token
    expected = []
    for g in range(3):
        members = [v[t] for t in range(7) if owner[t] == g]
        pooled = sum(members, torch.zeros(8)) / (len(members) + 1.0)  # eps = 1 in the denominator
        expected.append(m.proj(pooled))
    assert torch.allclose(out[0], torch.stack(expected), atol=1e-5)


def test_gumbel_hard_samples_follow_the_softmax():
    # Gumbel-max trick: argmax(logits + Gumbel noise) ~ Categorical(softmax(logits))
    torch.manual_seed(1)
    logits = torch.tensor([1.0, 0.0, -1.0]).expand(20000, 3)
    freq = gumbel_softmax(logits, tau=1.0, hard=True, dim=-1).mean(0)
    assert torch.allclose(freq, torch.softmax(torch.tensor([1.0, 0.0, -1.0]), 0), atol=0.02)


def test_grouping_block_reduces_tokens_to_output_groups():
    blk = GroupingBlock(32, 32, num_heads=4, num_group_tokens=16, num_output_groups=5)
    x, attn = blk(torch.randn(2, 49, 32), torch.randn(2, 16, 32))
    assert x.shape == (2, 5, 32) and attn.soft.shape == (2, 5, 49)
    assert attn.q.shape == (2, 5, 32) and attn.k.shape == (2, 49, 32)


def test_vision_tower_any_input_size_at_inference():
    cfg = load_config("debug").model.vision
    vt = GroupViT(cfg).eval()
    p, groups = cfg.patch_size, cfg.num_output_groups[-1]
    out = vt(torch.randn(1, 3, 12 * p, 9 * p))  # not the training grid: a 12x9 one
    assert out.grid == (12, 9) and out.tokens.shape == (1, groups, cfg.embed_dim)
    assert out.attns[0].soft.shape == (1, groups, 108)


def test_two_stage_groupvit_composes_assignments():
    cfg = load_config("groupvit-gcc", ["model.vision.img_size=32", "model.vision.patch_size=8",
                                       "model.vision.embed_dim=48", "model.vision.num_heads=[2,2,2]",
                                       "model.vision.depths=[1,1,1]", "model.vision.num_group_tokens=[6,3,0]",
                                       "model.vision.num_output_groups=[6,3]"])
    vt = GroupViT(cfg.model.vision).eval()
    out = vt(torch.randn(2, 3, 32, 32))
    assert out.tokens.shape == (2, 3, 48)
    flat = flat_assignment(out.attns, "soft")  # (B, 3, 16): each patch's probability mass over final groups
    assert flat.shape == (2, 3, 16) and torch.allclose(flat.sum(1), torch.ones(2, 16), atol=1e-5)


def test_centred_keys_assign_by_what_tells_tokens_apart():
    """center_keys: logits q_g . (k_n - mean_n k), worked by a plain loop; a shift shared by every token (what
    the whole image has in common) changes nothing, while without centring it moves tokens between groups."""
    torch.manual_seed(0)
    m = AssignAttention(8, hard=True, center_keys=True).eval()
    groups, tokens = torch.randn(1, 3, 8), torch.randn(1, 6, 8)
    _, attn = m(groups, tokens)
    q, k = m.q_proj(groups)[0], m.k_proj(tokens)[0]
    mean = sum(k[n] for n in range(6)) / 6
    want = torch.stack([torch.stack([(q[g] * (k[n] - mean)).sum() * 8 ** -0.5 for n in range(6)])
                        for g in range(3)]).softmax(0)
    torch.testing.assert_close(attn.soft[0], want, rtol=0, atol=1e-6)
    shift = torch.randn(1, 1, 8) * 5
    _, shifted = m(groups, tokens + shift)
    torch.testing.assert_close(shifted.soft, attn.soft, rtol=0, atol=1e-5)
    plain = AssignAttention(8, hard=True).eval()
    plain.load_state_dict(m.state_dict())
    assert not torch.allclose(plain(groups, tokens + shift)[1].soft, plain(groups, tokens)[1].soft, atol=1e-3)


def test_without_the_group_residual_a_group_is_its_tokens_only():
    """group_residual=False: the block's output is a function of the assigned tokens' mean alone (GroupViT adds
    the cross-attended group query, which sees the whole image)."""
    torch.manual_seed(0)
    block = GroupingBlock(16, 16, 2, num_group_tokens=4, num_output_groups=2, group_residual=False).eval()
    x, tok = torch.randn(1, 9, 16), torch.randn(1, 4, 16)
    out, attn = block(x, tok)
    pooled = block.assign.proj((attn.hard / (attn.hard.sum(-1, keepdim=True) + 1.0)) @ block.assign.v_proj(block.norm_x(x)))
    want = block.reduction(pooled) + block.mlp_channels(block.norm_new_x(pooled))
    torch.testing.assert_close(out, want, rtol=0, atol=1e-6)
    with_residual = GroupingBlock(16, 16, 2, num_group_tokens=4, num_output_groups=2).eval()
    with_residual.load_state_dict(block.state_dict())
    assert not torch.allclose(with_residual(x, tok)[0], out, atol=1e-4)


def test_residual_drop_builds_some_images_groups_from_their_tokens_only():
    """group_residual_drop: in training, each image's groups either get GroupViT's residual or are built from their
    tokens alone (the group_residual=False block with the same weights), per image; evaluation always adds it."""
    torch.manual_seed(0)
    drop = GroupingBlock(16, 16, 2, num_group_tokens=4, num_output_groups=2, gumbel=False,
                         group_residual_drop=0.5).train()
    plain = GroupingBlock(16, 16, 2, num_group_tokens=4, num_output_groups=2, gumbel=False).train()
    alone = GroupingBlock(16, 16, 2, num_group_tokens=4, num_output_groups=2, gumbel=False,
                          group_residual=False).train()
    plain.load_state_dict(drop.state_dict())
    alone.load_state_dict(drop.state_dict())
    x, tok = torch.randn(32, 9, 16), torch.randn(32, 4, 16)
    out = drop(x, tok)[0]
    with_res, without = plain(x, tok)[0], alone(x, tok)[0]
    kept = [torch.allclose(out[i], with_res[i], atol=1e-6) for i in range(32)]
    dropped = [torch.allclose(out[i], without[i], atol=1e-6) for i in range(32)]
    assert all(k != d for k, d in zip(kept, dropped))  # every image is exactly one of the two
    assert 4 <= sum(dropped) <= 28  # about half (binomial(32, 0.5): outside this range with p < 1e-4)
    torch.testing.assert_close(drop.eval()(x, tok)[0], plain.eval()(x, tok)[0], rtol=0, atol=0)


def test_pooled_norm_layer_normalises_the_assigned_tokens_before_the_residual():
    """pooled_norm: group = LayerNorm(mean of its assigned tokens' values, projected) + the cross-attended query,
    worked out from the block's own parts; without it the pooled part keeps its (small) scale."""
    torch.manual_seed(0)
    block = GroupingBlock(16, 16, 2, num_group_tokens=4, num_output_groups=2, pooled_norm=True).eval()
    x, tok = torch.randn(2, 9, 16), torch.randn(2, 4, 16)
    out, attn = block(x, tok)
    groups = block.norm_post_tokens(block.mlp_inter(block.norm_tokens(tok).transpose(1, 2)).transpose(1, 2))
    groups = block.pre_assign_attn(groups, block.norm_x(x))
    pooled = block.assign.proj((attn.hard / (attn.hard.sum(-1, keepdim=True) + 1.0))
                               @ block.assign.v_proj(block.norm_x(x)))
    mean, var = pooled.mean(-1, keepdim=True), pooled.var(-1, unbiased=False, keepdim=True)
    new_x = (pooled - mean) / torch.sqrt(var + 1e-5) + groups  # the LayerNorm starts at weight 1, bias 0
    want = block.reduction(new_x) + block.mlp_channels(block.norm_new_x(new_x))
    torch.testing.assert_close(out, want, rtol=0, atol=1e-5)
    plain = GroupingBlock(16, 16, 2, num_group_tokens=4, num_output_groups=2).eval()
    plain.load_state_dict({k: v for k, v in block.state_dict().items() if not k.startswith("norm_pooled")})
    assert not torch.allclose(plain(x, tok)[0], out, atol=1e-3)
