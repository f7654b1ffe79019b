"""The two-tower model: sizes, the encode contract, the entity decoder's padding mask, EMA, pretrained loading."""

import shutil

import pytest
import torch
import torch.nn.functional as F

from ovseg import build_model
from ovseg.config import load_config
from ovseg.models.text import resolve_dir
from ovseg.models.vision import GroupViT

CFG = load_config("debug")
V = CFG.model.vision
G = V.num_output_groups[-1]  # the model's final groups
S, P, W = V.img_size, V.patch_size, V.embed_dim  # training image side, patch side, vision width
N = S // P  # token grid side at the training size
E, L = CFG.model.embed_dim, CFG.model.text.max_length  # joint width, text length
# DINO/ViT weights map onto the paper's linear patch embedding, and a 4-block ViT onto 2 + 2 blocks
PATCH_STEM = ["model.vision.stem=patch", "model.vision.depths=[2,2]"]


def test_paper_vision_tower_has_100_05m_parameters():
    with torch.device("meta"):
        tower = GroupViT(load_config("vit-b16-cc4m").model.vision)
    n = sum(p.numel() for p in tower.parameters())
    assert abs(n - 100.05e6) / 100.05e6 < 0.01, n  # reference section 2.6, computed from the released code


def test_encode_contract(debug_model):
    m = debug_model.eval()
    image_emb, group_emb, assign = m.encode_image(torch.randn(2, 3, S, S))
    assert image_emb.shape == (2, E) and group_emb.shape == (2, G, E) and assign.shape == (2, G, N, N)
    assert torch.allclose(image_emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(assign.sum(1), torch.ones(2, N, N), atol=1e-5)
    ids, mask = m.tokenizer(["a photo of a cat.", "a dog"])
    assert ids.shape == (2, L) and m.encode_text(ids, mask).shape == (2, E)


def _question_batch(tok, pad_fill=None):
    ids, mask = tok(["a [MASK] sleeps on a [MASK] .", "two [MASK] near the sea"])
    if pad_fill is not None:
        ids = torch.where(mask.bool(), ids, pad_fill)
    a_ids, a_mask = tok(["a photo of a cat and sofa", "a photo of a bird"])
    return {"question_ids": ids, "question_mask": mask, "answer_ids": a_ids, "answer_mask": a_mask}


def test_entity_decoder_ignores_padding_tokens(debug_model):
    m, tok = debug_model.eval(), debug_model.tokenizer
    img = torch.randn(2, 3, S, S)
    cap_ids, cap_mask = tok(["a cat on a sofa", "birds"])
    base = {"image": img, "caption_ids": cap_ids, "caption_mask": cap_mask}
    with torch.no_grad():
        ref = m({**base, **_question_batch(tok)})["entity_emb"]
        noisy_pad = torch.randint(1000, 20000, (2, L))
        changed = m({**base, **_question_batch(tok, noisy_pad)})["entity_emb"]
        assert torch.allclose(ref, changed, atol=1e-5)
        # control: if the padded positions were attended to, the same change would move the output
        q = _question_batch(tok, noisy_pad)
        q["question_mask"] = torch.ones_like(q["question_mask"])
        assert not torch.allclose(ref, m({**base, **q})["entity_emb"], atol=1e-3)


def test_momentum_encoder_is_a_frozen_ema_of_the_online_tower():
    m = build_model("debug")
    m.init_momentum()
    assert all(not p.requires_grad for p in m.momentum_vision.parameters())
    before = {k: v.clone() for k, v in m.momentum_vision.state_dict().items()}
    with torch.no_grad():
        for p in m.vision.parameters():
            p.add_(torch.randn_like(p))
    m.momentum_update()
    online = m.vision.state_dict()
    for k, v in m.momentum_vision.state_dict().items():
        if v.dtype.is_floating_point:
            assert torch.allclose(v, 0.99 * before[k] + 0.01 * online[k], atol=1e-6), k
        else:  # BatchNorm's batch counter is not averaged
            assert torch.equal(v, before[k]), k


def test_cross_image_masks_get_no_gradient_into_the_momentum_encoder():
    m = build_model("debug").train()
    m.init_momentum()
    tok = m.tokenizer
    ids, mask = tok(["a cat", "a dog"])
    e_ids, e_mask = tok(["A photo of cat", "A photo of dog"])
    out = m({"image": torch.randn(2, 3, S, S), "caption_ids": ids, "caption_mask": mask,
             "cross_image": torch.randn(2, 3, S, S), "cross_entity_ids": e_ids, "cross_entity_mask": e_mask})
    assert out["mask_pred"].shape == out["mask_target"].shape == (2, G, N, N)
    assert out["mask_relevance"].shape == (2, G) and not out["mask_target"].requires_grad
    out["mask_pred"].sum().backward()
    assert m.vision.layers[0].downsample.assign.q_proj.weight.grad is not None


def test_dino_checkpoint_maps_onto_the_stages(tmp_path):
    from timm.models.vision_transformer import VisionTransformer

    dino = VisionTransformer(img_size=S, patch_size=P, embed_dim=W, depth=4, num_heads=V.num_heads[0], num_classes=0)
    state = dino.state_dict()
    torch.save(state, tmp_path / "dino.pth")
    m = build_model("debug", [*PATCH_STEM, f"model.vision.pretrained={tmp_path / 'dino.pth'}"])
    vs = m.vision.state_dict()
    assert torch.equal(vs["layers.0.blocks.1.attn.qkv.weight"], state["blocks.1.attn.qkv.weight"])
    assert torch.equal(vs["layers.1.blocks.0.mlp.fc2.weight"], state["blocks.2.mlp.fc2.weight"])
    assert torch.equal(vs["layers.1.blocks.1.norm1.bias"], state["blocks.3.norm1.bias"])
    assert torch.equal(vs["patch_embed.proj.weight"], state["patch_embed.proj.weight"])
    assert torch.equal(vs["pos_embed"], state["pos_embed"][:, 1:])  # the [CLS] slot is dropped
    assert torch.equal(vs["norm.weight"], state["norm.weight"])
    report = m.load_reports[-1]
    assert "cls_token" in report.unused
    assert any(k.startswith("layers.0.downsample.") for k in report.new) and "layers.0.group_token" in report.new
    assert set(report.loaded) | set(report.new) == set(vs)  # every key accounted for


def test_pretrained_pos_embed_is_resized_and_shapes_checked(tmp_path):
    from safetensors.torch import save_file
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(img_size=S // 2, patch_size=P, embed_dim=W, depth=4, num_heads=V.num_heads[0], num_classes=0)
    save_file(vit.state_dict(), str(tmp_path / "vit.safetensors"))
    m = build_model("debug", [*PATCH_STEM, f"model.vision.pretrained={tmp_path / 'vit.safetensors'}"])
    assert m.vision.pos_embed.shape == (1, N * N, W)  # resized from (S/2 / P)^2 positions
    wide = VisionTransformer(img_size=S, patch_size=P, embed_dim=W + 16, depth=4, num_heads=V.num_heads[0], num_classes=0)
    torch.save(wide.state_dict(), tmp_path / "wide.pth")
    with pytest.raises(ValueError, match="shape"):
        build_model("debug", [*PATCH_STEM, f"model.vision.pretrained={tmp_path / 'wide.pth'}"])


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"model": {"w": torch.zeros(1)}, "args": object()}, tmp_path / "full.pth")
    with pytest.raises(ValueError, match="plain tensors"):
        build_model("debug", [*PATCH_STEM, f"model.vision.pretrained={tmp_path / 'full.pth'}"])


def test_bert_directory_loads_its_weights(tmp_path):
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=128))
    bert.save_pretrained(tmp_path / "bert")
    vocab_dir = resolve_dir("builtin:minilm")
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(vocab_dir / name, tmp_path / "bert" / name)
    m = build_model("debug", [f"model.text.pretrained_dir={tmp_path / 'bert'}"])
    assert m.text.width == 64
    assert torch.equal(m.text.model.encoder.layer[1].output.dense.weight, bert.encoder.layer[1].output.dense.weight)
    assert not m.load_reports[0].get("missing_keys")


def test_packaged_minilm_is_a_real_pretrained_text_tower():
    m = build_model("debug", ["model.text.pretrained_dir=builtin:minilm"]).eval()
    ids, mask = m.tokenizer(["a photo of a dog", "a picture of a puppy", "a spreadsheet of tax figures"])
    with torch.no_grad():
        cls = F.normalize(m.text(ids, mask)[0], dim=-1)
    assert m.text.width == 384 and m.tokenizer.mask_token == "[MASK]"
    assert float(cls[0] @ cls[1]) > float(cls[0] @ cls[2])  # pretrained: related captions lie closer


def test_missing_text_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_model("debug", [f"model.text.pretrained_dir={tmp_path / 'nothing'}"])


def test_class_prompt_path_gives_group_class_logits(debug_model):
    m, tok = debug_model.eval(), debug_model.tokenizer
    ids, mask = tok(["a cat", "a dog"])
    c_ids, c_mask = tok(["a photo of a cat.", "a photo of a dog.", "a photo of a bus."])
    with torch.no_grad():
        out = m({"image": torch.randn(2, 3, S, S), "caption_ids": ids, "caption_mask": mask,
                 "class_ids": c_ids, "class_mask": c_mask})
    assert out["class_emb"].shape == (3, E) and out["group_emb"].shape == (2, G, E)
    expected = out["logit_scale"] * torch.einsum("bge,ce->bgc", out["group_emb"], out["class_emb"])
    assert torch.allclose(out["group_class_logits"], expected, atol=1e-5)
    assert out["assign"].shape == (2, G, N, N)


def test_every_training_forward_gives_the_group_embeddings_of_encode_image(debug_model):
    # a caption-only batch (no class prompts, as with the paper's configs) still yields the group embeddings
    # the diversity term reads, and they are the ones zero-shot segmentation reads through encode_image
    m, tok = debug_model.eval(), debug_model.tokenizer
    ids, mask = tok(["a cat", "a dog"])
    images = torch.randn(2, 3, S, S)
    with torch.no_grad():
        out = m({"image": images, "caption_ids": ids, "caption_mask": mask})
        _, group_emb, _ = m.encode_image(images)
    assert "class_emb" not in out and out["group_emb"].shape == (2, G, E)
    assert torch.allclose(out["group_emb"], group_emb, atol=1e-6)


def test_conv_stem_gives_the_patch_grid_and_drops_partial_patches():
    from ovseg.models.vision import ConvStem
    cfg = load_config("debug", ["model.vision.stem=conv"]).model.vision
    tower = GroupViT(cfg).eval()
    assert isinstance(tower.patch_embed, ConvStem)
    out = tower(torch.randn(2, 3, S, S))
    assert out.grid == (N, N) and out.tokens.shape == (2, G, W)
    # like the patch embedding, pixels beyond the last full patch are dropped: (8P+6) x (9P+5) px -> an 8 x 9 grid
    x = torch.randn(1, 3, 8 * P + 6, 9 * P + 5)
    tokens = tower.patch_embed(x)
    assert tokens.shape == (1, 72, W)
    assert torch.equal(tokens, tower.patch_embed(x[..., :8 * P, :9 * P]))
    assert tower(torch.randn(1, 3, 12 * P, 8 * P)).grid == (12, 8)
    with pytest.raises(ValueError, match="stem"):
        GroupViT(load_config("debug", ["model.vision.stem=cnn"]).model.vision)


def test_frozen_norms_normalise_with_running_statistics_in_training():
    torch.manual_seed(0)
    m = build_model(CFG)
    tok = m.tokenizer
    ids, mask = tok(["a photo of a cat.", "a photo of a dog.", "a photo of a bus."])
    bn = [x for x in m.text_projector.modules() if isinstance(x, torch.nn.BatchNorm1d)]
    img_bn = [x for x in m.img_projector.modules() if isinstance(x, torch.nn.BatchNorm1d)]
    assert bn and img_bn
    with torch.no_grad():  # give the statistics values of their own, so that "unchanged" says something
        for b in bn + img_bn:
            b.running_mean.normal_()
            b.running_var.uniform_(0.5, 2.0)
    m.eval()
    with torch.no_grad():
        at_eval = m.encode_text(ids, mask)
    m.set_frozen_norms(("text_projector",))
    m.train()
    assert all(not b.training for b in bn) and all(b.training for b in img_bn) and m.training
    before = [b.running_mean.clone() for b in bn]
    img_before = [b.running_mean.clone() for b in img_bn]
    trained = m.encode_text(ids, mask)  # the frozen text tower runs as at inference; its projector's norm too
    m.encode_image(torch.randn(4, 3, S, S))
    assert torch.allclose(trained, at_eval, atol=1e-6)
    assert all(torch.equal(b.running_mean, x) for b, x in zip(bn, before))
    assert not all(torch.equal(b.running_mean, x) for b, x in zip(img_bn, img_before))
    trained.sum().backward()  # the norm's scale and shift still learn
    assert all(b.weight.grad is not None for b in bn)
    m.set_frozen_norms(())
    assert all(b.training for b in bn)
    with pytest.raises(ValueError, match="no module"):
        m.set_frozen_norms(("txt_projector",))


def test_running_class_prompt_norms_give_the_class_embeddings_that_evaluation_reads():
    """model.class_prompt_norms=running: in a training forward the class prompts (multi-label, supervised masks)
    pass the text projector's BatchNorm with its running statistics, exactly as encode_text at evaluation, and
    leave them unchanged; the captions of the same forward still normalise by (and update) the batch's."""
    torch.manual_seed(0)
    cfg = load_config("debug", ["model.class_prompt_norms=running", "model.text.dropout=0"])
    m = build_model(cfg)
    tok = m.tokenizer
    bn = [x for x in m.text_projector.modules() if isinstance(x, torch.nn.BatchNorm1d)]
    with torch.no_grad():
        for b in bn:
            b.running_mean.normal_()
            b.running_var.uniform_(0.5, 2.0)
    m.train()
    before = [b.running_mean.clone() for b in bn]
    c_ids, c_mask = tok(["a photo of a cat.", "a photo of a dog.", "a photo of a bus."])
    ids, mask = tok(["a cat on a mat", "a dog and a bus", "a red bus"])
    batch = {"image": torch.randn(3, 3, S, S), "caption_ids": ids, "caption_mask": mask,
             "class_ids": c_ids, "class_mask": c_mask}
    out = m(batch)
    assert all(b.training for b in bn)  # restored after the class prompts
    # the running means moved once, by the captions' forward alone (momentum 0.1 toward their batch mean)
    with torch.no_grad():
        hidden = m.text_projector.net[0](m.text_features(ids, mask)[0])
    torch.testing.assert_close(bn[0].running_mean, 0.9 * before[0] + 0.1 * hidden.mean(0), rtol=0, atol=1e-5)
    out["group_class_logits"].sum().backward()  # the norm's scale and shift still learn from the prompts
    assert bn[0].weight.grad is not None and bn[0].weight.grad.abs().sum() > 0
    m.eval()
    with torch.no_grad():
        at_eval = m.encode_text(c_ids, c_mask)  # what zero-shot evaluation reads, with these statistics
    assert torch.allclose(out["class_emb"], at_eval, atol=1e-6)
    batch_norms = build_model(load_config("debug", ["model.text.dropout=0"]))
    batch_norms.load_state_dict(m.state_dict())
    assert not torch.allclose(batch_norms.train()(batch)["class_emb"], at_eval, atol=1e-3)  # the default: "batch"
