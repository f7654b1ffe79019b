"""CLIP and DINOv2 weights onto the two towers, through the public config keys, on real (tiny) architectures.

Sources: a Hugging Face ``CLIPModel`` from a small ``CLIPConfig`` (``save_pretrained``), the same weights renamed
to OpenCLIP's layout by a mapping written here (open_clip src/open_clip/model.py, transformer.py), and timm's
DINOv2 ViT-S/14 (``pretrained=False``, small widths) in timm's and in the facebookresearch hub's layout. For each:
every key is accounted for, loaded tensors are the source's, and the mapped pieces compute the source's own
function: the embedded patch tokens and each ViT block (run on the patch tokens, no group token), and CLIP's
pooled, projected text feature. The OpenCLIP reference forward is written here with ``nn.MultiheadAttention``,
independently of both the loader and transformers.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from clip_fixtures import write_clip_tokenizer
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from ovseg import build_model
from ovseg.config import ConfigError

IMG, P, W, HEADS, DEPTH = 32, 8, 32, 2, 4  # a 4 x 4 grid, 4 blocks -> stages of 2 + 2
TEXT_W, TEXT_DEPTH, PROJ, CTX = 32, 2, 24, 16
TEXTS = ["a cat on a sofa", "a dog", "cat dog cat"]


def shrink(name_patch=P, img=IMG, extra=()):
    """Overrides that shrink a named config to the fixtures' sizes (its switches stay as the file sets them)."""
    return [f"model.vision.img_size={img}", f"model.vision.patch_size={name_patch}", f"model.vision.embed_dim={W}",
            "model.vision.depths=[2,2]", f"model.vision.num_heads=[{HEADS},{HEADS}]",
            "model.vision.num_group_tokens=[8,0]", "model.vision.num_output_groups=[4]",
            "model.vision.drop_path_rate=0.0", f"model.text.max_length={CTX}", "model.embed_dim=32",
            "model.proj_hidden_dim=64", "model.decoder_heads=2", f"loss.mask_size={img}", *extra]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny CLIPModel saved with save_pretrained, its tokenizer files beside it."""
    folder = write_clip_tokenizer(tmp_path_factory.mktemp("clip"))
    tok = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    torch.manual_seed(1)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=TEXT_W, intermediate_size=2 * TEXT_W,
                         num_hidden_layers=TEXT_DEPTH, num_attention_heads=HEADS, max_position_embeddings=CTX,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=W, intermediate_size=4 * W, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                           image_size=IMG, patch_size=P),
        projection_dim=PROJ)
    model = CLIPModel(config).eval()
    with torch.no_grad():  # LayerNorms away from their (1, 0) init, so that a missed norm shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    return folder, model


def openclip_state(hf: CLIPModel) -> dict[str, torch.Tensor]:
    """The HF weights under OpenCLIP's names (CLIP.state_dict(): visual.* and the text tower at the top level)."""
    sd = {k: v.detach().clone() for k, v in hf.state_dict().items()}
    out = {"logit_scale": sd["logit_scale"]}
    for side, prefix in (("vision_model", "visual."), ("text_model", "")):
        layers = hf.config.vision_config.num_hidden_layers if side == "vision_model" else TEXT_DEPTH
        for i in range(layers):
            a, b = f"{side}.encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
            for t in ("weight", "bias"):
                out[b + f"attn.in_proj_{t}"] = torch.cat([sd[a + f"self_attn.{n}_proj.{t}"] for n in "qkv"])
                for src, dst in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                                 ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                    out[b + f"{dst}.{t}"] = sd[a + f"{src}.{t}"]
    e = "vision_model.embeddings."
    out.update({"visual.conv1.weight": sd[e + "patch_embedding.weight"],
                "visual.class_embedding": sd[e + "class_embedding"],
                "visual.positional_embedding": sd[e + "position_embedding.weight"],
                "visual.proj": sd["visual_projection.weight"].t().contiguous(),
                "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
                "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
                "text_projection": sd["text_projection.weight"].t().contiguous()})
    for src, dst in (("vision_model.pre_layrnorm", "visual.ln_pre"), ("vision_model.post_layernorm", "visual.ln_post"),
                     ("text_model.final_layer_norm", "ln_final")):
        for t in ("weight", "bias"):
            out[f"{dst}.{t}"] = sd[f"{src}.{t}"]
    return out


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def openclip_block(sd, prefix, x, heads, causal=False):
    """open_clip's ResidualAttentionBlock, with torch's nn.MultiheadAttention (batch first)."""
    d = x.shape[-1]
    mha = torch.nn.MultiheadAttention(d, heads, batch_first=True)
    mha.load_state_dict({"in_proj_weight": sd[prefix + "attn.in_proj_weight"],
                         "in_proj_bias": sd[prefix + "attn.in_proj_bias"],
                         "out_proj.weight": sd[prefix + "attn.out_proj.weight"],
                         "out_proj.bias": sd[prefix + "attn.out_proj.bias"]})
    mask = torch.full((x.shape[1], x.shape[1]), float("-inf")).triu(1) if causal else None

    def ln(t, name):
        return F.layer_norm(t, (d,), sd[prefix + name + ".weight"], sd[prefix + name + ".bias"])

    h = ln(x, "ln_1")
    x = x + mha(h, h, h, need_weights=False, attn_mask=mask)[0]
    h = F.linear(quick_gelu(F.linear(ln(x, "ln_2"), sd[prefix + "mlp.c_fc.weight"], sd[prefix + "mlp.c_fc.bias"])),
                 sd[prefix + "mlp.c_proj.weight"], sd[prefix + "mlp.c_proj.bias"])
    return x + h


def blocks_of(m):
    return [b for layer in m.vision.layers for b in layer.blocks]


def accounted(report, file_keys):
    """Every file key is exactly one of: a source of loaded keys (a stacked q/k/v feeds three), unused, of the
    other tower."""
    sources = sorted({k for v in report.origin.values() for k in v})
    parts = [*sources, *report.unused, *report.other]
    assert sorted(parts) == sorted(file_keys), set(file_keys) ^ set(parts)


CLIP_VISION = ["model.vision.pretrained_kind=clip"]


@torch.no_grad()
def test_hugging_face_clip_folder_gives_both_towers_the_sources_function(clip_dir):
    folder, hf = clip_dir
    m = build_model("vit-b16-clip-cc4m", shrink(extra=[f"model.vision.pretrained={folder}",
                                                        f"model.text.pretrained_dir={folder}"])).eval()
    text_report, vision_report = m.load_reports
    file_keys = list(hf.state_dict())
    # vision: every key accounted for; only CLIP's class token and its projection have no place here
    accounted(vision_report, file_keys)
    assert vision_report.layout == "hf-clip"
    assert vision_report.unused == ["vision_model.embeddings.class_embedding", "visual_projection.weight"]
    assert all(k.startswith(("text_model.", "text_projection", "logit_scale")) for k in vision_report.other)
    own = m.vision.state_dict()
    assert sorted(vision_report.loaded + vision_report.new) == sorted(own)
    assert not [k for k in vision_report.new if ".blocks." in k or k.startswith(("pos_embed", "pre_norm", "norm."))]
    sd = hf.state_dict()
    l3 = "vision_model.encoder.layers.3.self_attn."
    qkv = torch.cat([sd[l3 + f"{n}_proj.weight"] for n in "qkv"])
    assert torch.equal(own["layers.1.blocks.1.attn.qkv.weight"], qkv)
    assert torch.equal(own["pre_norm.weight"], sd["vision_model.pre_layrnorm.weight"])
    assert torch.equal(own["norm.bias"], sd["vision_model.post_layernorm.bias"])
    assert torch.equal(own["pos_embed"][0], sd["vision_model.embeddings.position_embedding.weight"][1:])
    assert not own["patch_embed.proj.bias"].any()  # CLIP's conv has no bias
    # the function: embedded patch tokens, then every block, against HF's own modules on the patch tokens
    x = torch.randn(2, 3, IMG, IMG)
    ours, _ = m.vision.embed(x)
    emb = hf.vision_model.embeddings
    ref = emb.patch_embedding(x).flatten(2).transpose(1, 2) + emb.position_embedding.weight[1:]
    ref = hf.vision_model.pre_layrnorm(ref)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    for blk, layer in zip(blocks_of(m), hf.vision_model.encoder.layers, strict=True):
        ours, ref = blk(ours), layer(ref, None)
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    # text: the pooled, projected feature is CLIPModel's text feature; every token is projected the same way
    ids, mask = m.tokenizer(TEXTS)
    pooled, tokens = m.text(ids, mask)
    ref_out = hf.text_model(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(pooled, hf.get_text_features(input_ids=ids, attention_mask=mask).pooler_output,
                               atol=1e-5, rtol=1e-5)
    real = mask.bool()
    torch.testing.assert_close(tokens[real], hf.text_projection(ref_out.last_hidden_state)[real], atol=1e-5, rtol=1e-5)
    assert m.text.width == PROJ and ids.shape[1] == CTX
    # the text report: every text key loaded, the vision keys left to the vision loader; the added mask row
    assert text_report.layout == "hf-clip" and not text_report.new and not text_report.unused
    accounted(text_report, file_keys)
    assert all(k.startswith(("vision_model.", "visual_projection", "logit_scale")) for k in text_report.other)
    emb_rows = m.text.model.text_model.embeddings.token_embedding.weight
    vocab = sd["text_model.embeddings.token_embedding.weight"]
    assert m.tokenizer.mask_token == "<|mask|>" and emb_rows.shape[0] == vocab.shape[0] + 1
    torch.testing.assert_close(emb_rows[-1], vocab.mean(0))
    assert any("<|mask|>" in n for n in text_report.notes)
    q_ids, q_mask = m.tokenizer([f"a {m.tokenizer.mask_token} on a sofa"])
    assert int(q_ids.max()) == vocab.shape[0] and torch.isfinite(m.encode_text(q_ids, q_mask)).all()


@torch.no_grad()
def test_openclip_state_dict_maps_onto_both_towers(clip_dir, tmp_path):
    folder, hf = clip_dir
    sd = openclip_state(hf)
    save_file(sd, str(tmp_path / "open_clip_model.safetensors"))
    path = tmp_path / "open_clip_model.safetensors"
    keys = [f"model.vision.pretrained={path}", f"model.text.pretrained_dir={path}",
            f"model.text.tokenizer_dir={folder}", f"model.text.num_heads={HEADS}"]
    m = build_model("vit-b16-clip-cc4m", shrink(extra=keys)).eval()
    text_report, vision_report = m.load_reports
    assert vision_report.layout == text_report.layout == "openclip"
    accounted(vision_report, list(sd))
    accounted(text_report, list(sd))
    assert vision_report.unused == ["visual.class_embedding", "visual.proj"] and not text_report.unused
    assert sorted(vision_report.other) == sorted(k for k in sd if not k.startswith("visual."))
    assert sorted(text_report.other) == sorted(k for k in sd if k.startswith("visual.") or k == "logit_scale")
    assert torch.equal(m.vision.state_dict()["layers.0.blocks.1.attn.qkv.bias"],
                       sd["visual.transformer.resblocks.1.attn.in_proj_bias"])
    # vision: open_clip's own computation, written with nn.MultiheadAttention
    x = torch.randn(2, 3, IMG, IMG)
    ours, _ = m.vision.embed(x)
    ref = F.conv2d(x, sd["visual.conv1.weight"], stride=P).flatten(2).transpose(1, 2)
    ref = ref + sd["visual.positional_embedding"][1:]
    ref = F.layer_norm(ref, (W,), sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    for i, blk in enumerate(blocks_of(m)):
        ours, ref = blk(ours), openclip_block(sd, f"visual.transformer.resblocks.{i}.", ref, HEADS)
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    # text: embeddings, causal blocks, ln_final, the end-of-text token (argmax of the ids), @ text_projection
    ids, mask = m.tokenizer(TEXTS)
    t = sd["token_embedding.weight"][ids] + sd["positional_embedding"][: ids.shape[1]]
    for i in range(TEXT_DEPTH):
        t = openclip_block(sd, f"transformer.resblocks.{i}.", t, HEADS, causal=True)
    t = F.layer_norm(t, (TEXT_W,), sd["ln_final.weight"], sd["ln_final.bias"])
    ref_pooled = t[torch.arange(len(TEXTS)), ids.argmax(-1)] @ sd["text_projection"]
    torch.testing.assert_close(m.text(ids, mask)[0], ref_pooled, atol=1e-5, rtol=1e-5)


def test_openclip_folder_config_decides_what_the_file_cannot_say(clip_dir, tmp_path):
    import json

    folder, hf = clip_dir
    oc = tmp_path / "ViT-tiny-openclip"
    oc.mkdir()
    save_file(openclip_state(hf), str(oc / "open_clip_model.safetensors"))
    model_cfg = {"quick_gelu": True, "vision_cfg": {"width": W, "head_width": W // HEADS}, "text_cfg": {"heads": HEADS}}
    (oc / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    keys = [f"model.vision.pretrained={oc}", f"model.text.pretrained_dir={oc}", f"model.text.tokenizer_dir={folder}"]
    m = build_model("vit-b16-clip-cc4m", shrink(extra=keys))  # model.text.num_heads stays the file's 8
    assert m.text.model.config.num_attention_heads == HEADS and m.text.model.config.hidden_act == "quick_gelu"
    assert m.load_reports[1].layout == "openclip"
    assert m.load_reports[1].unused == ["visual.class_embedding", "visual.proj"]
    model_cfg["vision_cfg"]["head_width"] = W // 4
    (oc / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    with pytest.raises(ValueError, match=r"model.vision.num_heads=\[4, 4\]"):
        build_model("vit-b16-clip-cc4m", shrink(extra=keys))


def test_openclip_file_needs_a_tokenizer_folder_and_named_configs_need_their_weights(clip_dir, tmp_path):
    folder, hf = clip_dir
    save_file(openclip_state(hf), str(tmp_path / "oc.safetensors"))
    with pytest.raises(FileNotFoundError, match="model.text.tokenizer_dir"):
        build_model("vit-b16-clip-cc4m", shrink(extra=[f"model.vision.pretrained={tmp_path / 'oc.safetensors'}",
                                                        f"model.text.pretrained_dir={tmp_path / 'oc.safetensors'}"]))
    with pytest.raises(ConfigError, match="model.vision.pretrained"):
        build_model("vit-b16-clip-cc4m")
    with pytest.raises(ConfigError, match="model.text.pretrained_dir"):
        build_model("vit-b16-clip-cc4m", [f"model.vision.pretrained={folder}"])
    with pytest.raises(ConfigError, match="model.vision.pretrained"):
        build_model("vit-b14-dinov2-cc4m")
    with pytest.raises(ValueError, match="pretrained_kind=dinov2"):  # a CLIP folder where DINOv2 is expected
        build_model("vit-b14-dinov2-cc4m", shrink(extra=[f"model.vision.pretrained={folder}", *DINO_KEYS]))
    with pytest.raises(ValueError, match="model.vision.act"):  # the folder's config says quick_gelu
        build_model("vit-b16-clip-cc4m", shrink(extra=[f"model.vision.pretrained={folder}", "model.vision.act=gelu",
                                                        f"model.text.pretrained_dir={folder}"]))
    with pytest.raises(ValueError, match="pre_norm=true"):  # CLIP's ln_pre needs the pre-norm layer
        build_model("debug", shrink(extra=["model.vision.stem=patch", f"model.vision.pretrained={folder}",
                                           "model.vision.act=quick_gelu"]))


@torch.no_grad()
def test_timm_clip_vit_counts_as_clip_and_keeps_its_pre_norm(clip_dir, tmp_path):
    folder, _ = clip_dir
    src = timm.create_model("vit_base_patch16_clip_quickgelu_224", pretrained=False, embed_dim=W, depth=DEPTH,
                            num_heads=HEADS, img_size=IMG, patch_size=P, num_classes=0).eval()
    src.norm_pre.weight.add_(torch.randn(W))  # away from its (1, 0) init, so that a missed pre-norm shows
    save_file(src.state_dict(), str(tmp_path / "timm_clip.safetensors"))
    m = build_model("vit-b16-clip-cc4m", shrink(extra=[f"model.vision.pretrained={tmp_path / 'timm_clip.safetensors'}",
                                                        f"model.text.pretrained_dir={folder}"])).eval()
    report = m.load_reports[-1]
    assert report.layout == "timm-clip" and report.unused == ["cls_token"]
    accounted(report, list(src.state_dict()))
    x = torch.randn(2, 3, IMG, IMG)
    ours, _ = m.vision.embed(x)
    ref = src.norm_pre(src.patch_embed(x) + src.pos_embed[:, 1:])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    for blk, ref_blk in zip(blocks_of(m), src.blocks, strict=True):
        ours, ref = blk(ours), ref_blk(ref)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


DINO = dict(embed_dim=W, depth=DEPTH, num_heads=HEADS, img_size=56)  # patch 14: a 4 x 4 grid
DINO_KEYS = ["model.text.pretrained_required=false", "model.text.width=32", "model.text.depth=1",
             "model.text.num_heads=2", "model.text.mlp_dim=64"]


def dinov2(name: str):
    torch.manual_seed(2)
    src = timm.create_model(name, pretrained=False, **DINO).eval()
    with torch.no_grad():  # LayerScale and norms away from their constant init, so that a missed one shows
        for n, p in src.named_parameters():
            if n.endswith(".gamma") or "norm" in n:
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if "norm" in n and n.endswith("weight") else 0.0))
    return src


@torch.no_grad()
def test_timm_dinov2_maps_onto_the_stages_with_its_layer_scale(tmp_path):
    src = dinov2("vit_small_patch14_dinov2")
    save_file(src.state_dict(), str(tmp_path / "dinov2.safetensors"))
    m = build_model("vit-b14-dinov2-cc4m", shrink(14, 56, [f"model.vision.pretrained={tmp_path / 'dinov2.safetensors'}",
                                                           *DINO_KEYS])).eval()
    report = m.load_reports[-1]
    accounted(report, list(src.state_dict()))
    assert report.layout == "dinov2" and report.unused == ["cls_token"] and not report.other
    own = m.vision.state_dict()
    assert sorted(report.loaded + report.new) == sorted(own)
    assert torch.equal(own["layers.1.blocks.0.ls2.gamma"], src.blocks[2].ls2.gamma)
    assert torch.equal(own["pos_embed"], src.pos_embed[:, 1:])
    x = torch.randn(2, 3, 56, 56)
    ours, _ = m.vision.embed(x)
    ref = src.patch_embed(x) + src.pos_embed[:, 1:]
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    for blk, ref_blk in zip(blocks_of(m), src.blocks, strict=True):
        ours, ref = blk(ours), ref_blk(ref)
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m.vision.norm(ours), src.norm(ref), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="layer_scale"):  # without LayerScale the blocks would not be DINOv2's
        build_model("vit-b14-dinov2-cc4m", shrink(14, 56, [f"model.vision.pretrained={tmp_path / 'dinov2.safetensors'}",
                                                           "model.vision.layer_scale=null", *DINO_KEYS]))


@torch.no_grad()
def test_dinov2_registers_are_kept_or_dropped_in_both_layouts(tmp_path):
    src = dinov2("vit_small_patch14_reg4_dinov2")
    sd = src.state_dict()
    save_file(sd, str(tmp_path / "reg.safetensors"))
    base = shrink(14, 56, [f"model.vision.pretrained={tmp_path / 'reg.safetensors'}", *DINO_KEYS])
    dropped = build_model("vit-b14-dinov2-cc4m", base).load_reports[-1]
    assert dropped.unused == ["cls_token", "reg_token"] and any("register" in n for n in dropped.notes)
    m = build_model("vit-b14-dinov2-cc4m", base + ["model.vision.num_registers=4"]).eval()
    assert m.load_reports[-1].unused == ["cls_token"]
    assert torch.equal(m.vision.register_tokens, sd["reg_token"])
    # the registers join the blocks: on [patches, registers] our first block gives timm's patch outputs of
    # [registers, patches] (attention does not see order; timm gives registers no positional embedding)
    x = torch.randn(2, 3, 56, 56)
    patches, _ = m.vision.embed(x)
    reg = m.vision.register_tokens.expand(2, -1, -1)
    ours = blocks_of(m)[0](torch.cat([patches, reg], 1))[:, :16]
    ref = src.blocks[0](torch.cat([reg, src.patch_embed(x) + src.pos_embed], 1))[:, 4:]
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    # the facebookresearch hub layout: register_tokens, mask_token, a [CLS] slot in pos_embed, chunked blocks
    hub = {"cls_token": sd["cls_token"], "mask_token": torch.zeros(1, W), "register_tokens": sd["reg_token"],
           "pos_embed": torch.cat([torch.zeros(1, 1, W), sd["pos_embed"]], 1)}
    hub.update({k.replace("blocks.", "blocks.0.", 1): v for k, v in sd.items()
                if k.startswith(("blocks.", "patch_embed", "norm"))})
    hub_file = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(hub, hub_file)
    m2 = build_model("vit-b14-dinov2-cc4m", shrink(14, 56, [f"model.vision.pretrained={hub_file}",
                                                            "model.vision.num_registers=4", *DINO_KEYS]))
    report = m2.load_reports[-1]
    accounted(report, list(hub))
    assert report.unused == ["cls_token", "mask_token"]
    for k, v in m.vision.state_dict().items():
        if k in report.loaded:
            assert torch.equal(m2.vision.state_dict()[k], v), k


@torch.no_grad()
def test_checkpoint_of_a_clip_model_rebuilds_its_text_tower_without_the_weights(clip_dir, tmp_path):
    from ovseg.checkpoint import load_checkpoint, save_checkpoint
    from ovseg.config import load_config

    folder, _ = clip_dir
    cfg = load_config("vit-b16-clip-cc4m", shrink(extra=[f"model.vision.pretrained={folder}",
                                                         f"model.text.pretrained_dir={folder}"]))
    model = build_model(cfg).eval()
    path = save_checkpoint(tmp_path / "c.safetensors", model, cfg)
    (folder / "model.safetensors").rename(tmp_path / "moved.safetensors")  # the weights are gone, the tokenizer stays
    try:
        loaded, _ = load_checkpoint(path)
    finally:
        (tmp_path / "moved.safetensors").rename(folder / "model.safetensors")
    loaded.eval()
    ids, mask = model.tokenizer([*TEXTS, f"a {model.tokenizer.mask_token}"])
    torch.testing.assert_close(loaded.encode_text(ids, mask), model.encode_text(ids, mask), atol=0, rtol=0)
    x = torch.randn(1, 3, IMG, IMG)
    torch.testing.assert_close(loaded.encode_image(x)[0], model.encode_image(x)[0], atol=0, rtol=0)
