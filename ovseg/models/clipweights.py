"""CLIP checkpoints, in both layouts people keep them in, renamed for this model's two towers.

Layouts (key names checked against the sources):
- OpenCLIP (``open_clip`` ``CLIP.state_dict()``, src/open_clip/model.py and transformer.py): the image tower
  under ``visual.`` (``conv1`` without bias, ``class_embedding``, ``positional_embedding`` with its [CLS] row,
  ``ln_pre``, ``transformer.resblocks.N.{ln_1, attn.in_proj_weight/bias, attn.out_proj, ls_1.gamma, ln_2,
  mlp.c_fc, mlp.c_proj, ls_2.gamma}``, ``ln_post``, ``proj`` (width x embed, used as ``x @ proj``)); the text
  tower at the top level (``token_embedding``, ``positional_embedding``, ``transformer.resblocks.N...``,
  ``ln_final``, ``text_projection``, width x embed, used as ``x @ text_projection``), or under ``text.``
  (CustomTextCLIP); ``logit_scale``. ``nn.MultiheadAttention``'s ``in_proj_weight`` stacks q, k, v.
- Hugging Face (``CLIPModel.save_pretrained``, transformers models/clip/modeling_clip.py):
  ``vision_model.{embeddings.patch_embedding, embeddings.class_embedding, embeddings.position_embedding,
  pre_layrnorm (sic), encoder.layers.N.{layer_norm1, self_attn.{q,k,v,out}_proj, layer_norm2, mlp.fc1, mlp.fc2},
  post_layernorm}``, ``visual_projection`` (Linear, no bias); ``text_model.{embeddings.token_embedding,
  embeddings.position_embedding, encoder.layers.N..., final_layer_norm}``, ``text_projection``; ``logit_scale``.

The vision tower maps onto the GroupViT stages (timm ``Block`` names: ``norm1, attn.qkv, attn.proj, ls1.gamma,
norm2, mlp.fc1, mlp.fc2, ls2.gamma``); the text tower maps onto Hugging Face's ``CLIPTextModelWithProjection``
names, which is the module ``text.py`` builds for ``model.text.kind=clip``.
"""

from __future__ import annotations

import torch

from .pretrained import Weights, stage_of

# open_clip block names -> timm Block names (the same sub-layers; open_clip transformer.py ResidualAttentionBlock)
_OPENCLIP_BLOCK = {"ln_1": "norm1", "attn.in_proj_weight": "attn.qkv.weight", "attn.in_proj_bias": "attn.qkv.bias",
                   "attn.out_proj": "attn.proj", "ln_2": "norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
                   "ls_1.gamma": "ls1.gamma", "ls_2.gamma": "ls2.gamma"}
_HF_BLOCK = {"layer_norm1": "norm1", "self_attn.out_proj": "attn.proj", "layer_norm2": "norm2",
             "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
_QKV = ("q_proj", "k_proj", "v_proj")


def clip_vision_layout(tensors: dict[str, torch.Tensor]) -> str:
    if "visual.conv1.weight" in tensors or ("conv1.weight" in tensors and "class_embedding" in tensors):
        return "openclip"
    if "vision_model.embeddings.patch_embedding.weight" in tensors or \
            "embeddings.patch_embedding.weight" in tensors:
        return "hf-clip"
    return ""


def _rename(name: str, table: dict[str, str]) -> str | None:
    for src, dst in table.items():
        if name == src or name.startswith(src + "."):
            return dst + name[len(src):]
    return None


def map_clip_vision(tensors: dict[str, torch.Tensor], model, layout: str) -> tuple[list, list[str], list[str]]:
    """A CLIP state dict -> ([(model key, tensor, [file keys])], unused vision keys, keys of the other tower)."""
    from .pretrained import fit_pos_embed

    where = stage_of(model)
    entries: list = []
    unused: list[str] = []
    other: list[str] = []
    if layout == "openclip":
        p = "visual." if "visual.conv1.weight" in tensors else ""
        top = {"conv1.weight": "patch_embed.proj.weight", "ln_pre": "pre_norm", "ln_post": "norm"}
        block_root, block_table, pos_key = "transformer.resblocks.", _OPENCLIP_BLOCK, "positional_embedding"
    else:
        p = "vision_model." if "vision_model.embeddings.patch_embedding.weight" in tensors else ""
        top = {"embeddings.patch_embedding.weight": "patch_embed.proj.weight", "pre_layrnorm": "pre_norm",
               "post_layernorm": "norm"}
        block_root, block_table, pos_key = "encoder.layers.", _HF_BLOCK, "embeddings.position_embedding.weight"
    qkv: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}  # HF: model key -> {q_proj: (file key, tensor)}
    for key, value in tensors.items():
        if p and not key.startswith(p):  # the text tower, the joint head (a vision-only file has no prefix)
            (unused if key == "visual_projection.weight" else other).append(key)
            continue
        name = key[len(p):]
        if name == pos_key:
            entries.append(("pos_embed", fit_pos_embed(value, model), [key]))
        elif _rename(name, top):
            entries.append((_rename(name, top), value, [key]))
        elif name.startswith(block_root):
            index, rest = name[len(block_root):].split(".", 1)
            if int(index) >= len(where):
                unused.append(key)
                continue
            s, j = where[int(index)]
            prefix = f"layers.{s}.blocks.{j}."
            sub = rest.split(".")
            if layout == "hf-clip" and len(sub) == 3 and sub[1] in _QKV:  # self_attn.q_proj.weight
                qkv.setdefault(prefix + "attn.qkv." + sub[2], {})[sub[1]] = (key, value)
            elif _rename(rest, block_table):
                entries.append((prefix + _rename(rest, block_table), value, [key]))
            else:
                unused.append(key)
        else:  # class embedding, projection, position ids, anything this model has no place for
            unused.append(key)
    for target, parts in qkv.items():  # q, k, v stacked in that order: timm's qkv (and nn.MultiheadAttention's)
        if set(parts) != set(_QKV):
            unused.extend(k for k, _ in parts.values())
            continue
        entries.append((target, torch.cat([parts[n][1] for n in _QKV]), [parts[n][0] for n in _QKV]))
    return entries, unused, other


def clip_vision_arch(weights: Weights) -> dict[str, object]:
    """What a CLIP folder's config says of the image tower, under this model's config keys (absent: unsaid)."""
    conf = weights.config or {}
    if weights.config_name == "config.json":  # CLIPModel: vision_config; CLIPVisionModel: the config itself
        vc = conf if conf.get("model_type") == "clip_vision_model" else conf.get("vision_config", {})
        said = {"model.vision.num_heads": vc.get("num_attention_heads"), "model.vision.act": vc.get("hidden_act"),
                "model.vision.norm_eps": vc.get("layer_norm_eps")}
    else:  # open_clip_config.json: {"model_cfg": {"quick_gelu": ..., "vision_cfg": {"width", "head_width"}}}
        mc = conf.get("model_cfg", {})
        vc = mc.get("vision_cfg", {})
        said = {"model.vision.num_heads": vc["width"] // vc.get("head_width", 64) if "width" in vc else None,
                "model.vision.act": None if "quick_gelu" not in mc else ("quick_gelu" if mc["quick_gelu"] else "gelu")}
    return {k: v for k, v in said.items() if v is not None}


def check_clip_vision_config(weights: Weights, cfg) -> None:
    """The heads, activation and LayerNorm eps a CLIP folder's config names must be this model's: the file's
    shapes cannot tell them apart, and loaded blocks with others would not compute what they were trained to."""
    ours = {"model.vision.num_heads": list(cfg.num_heads), "model.vision.act": cfg.act,
            "model.vision.norm_eps": cfg.norm_eps}
    for key, value in clip_vision_arch(weights).items():
        fix = [value] * len(cfg.num_heads) if key.endswith("num_heads") else value
        if ours[key] != fix:
            raise ValueError(f"{weights.path.parent / weights.config_name}: the CLIP image tower has {value!r} "
                             f"where this model has {key}={ours[key]}: set {key}={fix}")
