"""CLIP's text transformer as the text tower (``model.text.kind=clip``): its tokenizer, its module, its weights.

CLIP (Radford et al. 2021) encodes text with a causal transformer over byte-level BPE tokens, 77 positions,
and reads the sentence at the end-of-text token, projected by ``text_projection``. The module is Hugging
Face's ``CLIPTextModelWithProjection`` (transformers models/clip/modeling_clip.py: causal mask, final LayerNorm);
``text.py`` pools at the last real token (the tokenizer ends every text with end-of-text) and applies the
projection to every token, so the entity decoder reads the same space the pooled feature lies in.

Weights come from a Hugging Face CLIP folder (its config decides the architecture) or an OpenCLIP state dict
(the architecture read from its shapes; what they cannot say, the heads and the activation, from
``open_clip_config.json`` beside it, else ``model.text.num_heads`` / ``model.text.act``). The tokenizer is a
folder with CLIP's ``vocab.json`` and ``merges.txt``; an OpenCLIP file carries none. Entity completion needs a
mask token, which CLIP's vocabulary lacks: ``<|mask|>`` is added, and its embedding row starts at the mean of
the loaded rows (reported in the load report's notes).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

from .pretrained import LoadReport, read_weights

MASK_TOKEN = "<|mask|>"
_OPENCLIP_BLOCK = {"ln_1": "layer_norm1", "attn.out_proj": "self_attn.out_proj", "ln_2": "layer_norm2",
                   "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
_QKV = ("q_proj", "k_proj", "v_proj")


def clip_tokenizer_dir(cfg) -> Path:
    """The folder CLIP's tokenizer is read from: ``tokenizer_dir``, else a ``pretrained_dir`` folder that has it."""
    spec = cfg.tokenizer_dir
    if spec is None and cfg.pretrained_dir and Path(cfg.pretrained_dir).expanduser().is_dir():
        spec = cfg.pretrained_dir
    if spec is None:
        raise FileNotFoundError(
            "model.text.kind=clip needs CLIP's tokenizer: set model.text.tokenizer_dir to a folder with its "
            "vocab.json and merges.txt (a Hugging Face CLIP folder has them; an OpenCLIP file carries none). "
            "Nothing is downloaded")
    path = Path(spec).expanduser()
    if not ((path / "vocab.json").is_file() and (path / "merges.txt").is_file()) and \
            not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"CLIP tokenizer folder {path} has neither vocab.json + merges.txt nor "
                                "tokenizer.json (model.text.tokenizer_dir; nothing is downloaded)")
    return path


def load_clip_tokenizer(path: Path):
    hf = CLIPTokenizer.from_pretrained(str(path), local_files_only=True)
    if hf.pad_token is None:
        hf.pad_token = hf.eos_token
    if hf.mask_token is None:
        hf.add_special_tokens({"mask_token": MASK_TOKEN})
    return hf


def text_layout(tensors: dict[str, torch.Tensor]) -> tuple[str, str]:
    """(layout, key prefix) of a CLIP text tower in a state dict."""
    for prefix in ("", "text."):
        if prefix + "token_embedding.weight" in tensors:
            return "openclip", prefix
    for prefix in ("text_model.", ""):
        if prefix + "embeddings.token_embedding.weight" in tensors:
            return "hf-clip", prefix
    return "", ""


def _openclip_entries(tensors, p: str, report: LoadReport) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    root = p + "transformer.resblocks."
    for key, value in tensors.items():
        if not key.startswith(p) or key.startswith("visual."):  # the image tower (CustomTextCLIP: all but text.)
            report.other.append(key)
            continue
        name = key[len(p):]
        if name.startswith(("logit_scale", "logit_bias")):
            report.other.append(key)
            continue
        target, sources = None, [key]
        if name == "token_embedding.weight":
            target = "text_model.embeddings.token_embedding.weight"
        elif name == "positional_embedding":
            target = "text_model.embeddings.position_embedding.weight"
        elif name.startswith("ln_final."):
            target = "text_model.final_layer_norm." + name.split(".", 1)[1]
        elif name == "text_projection":  # (width, embed), applied as x @ P: a Linear's weight is P^T
            target, value = "text_projection.weight", value.t().contiguous()
        elif name == "text_projection.weight":
            target = "text_projection.weight"
        elif key.startswith(root):
            index, rest = key[len(root):].split(".", 1)
            layer = f"text_model.encoder.layers.{index}."
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):  # q, k, v stacked (nn.MultiheadAttention)
                kind = "weight" if rest.endswith("weight") else "bias"
                for n, part in zip(_QKV, value.chunk(3, dim=0)):
                    out[f"{layer}self_attn.{n}.{kind}"] = part.contiguous()
                    report.origin[f"{layer}self_attn.{n}.{kind}"] = [key]
                continue
            for src, dst in _OPENCLIP_BLOCK.items():
                if rest.startswith(src + "."):
                    target = layer + dst + rest[len(src):]
            if rest.startswith(("ls_1.", "ls_2.")):
                raise ValueError(f"{report.source}: '{key}': text blocks with LayerScale are not supported")
        elif name == "text_projection.bias":
            raise ValueError(f"{report.source}: '{key}': a text projection with a bias is not supported")
        if target is None:
            report.unused.append(key)
        else:
            out[target] = value
            report.origin[target] = sources
    return out


def _openclip_config(tensors, p: str, cfg, meta: dict | None, hf_tokenizer) -> CLIPTextConfig:
    tok = tensors[p + "token_embedding.weight"]
    root = p + "transformer.resblocks."
    layers = 1 + max((int(k[len(root):].split(".")[0]) for k in tensors if k.startswith(root)), default=-1)
    positions = tensors[p + "positional_embedding"].shape[0]
    proj = tensors.get(p + "text_projection")
    proj_dim = proj.shape[1] if proj is not None else tensors[p + "text_projection.weight"].shape[0]
    mc = (meta or {}).get("model_cfg", {})
    heads = mc.get("text_cfg", {}).get("heads", cfg.num_heads)
    act = ("quick_gelu" if mc["quick_gelu"] else "gelu") if "quick_gelu" in mc else cfg.act
    return CLIPTextConfig(vocab_size=max(len(hf_tokenizer), tok.shape[0]), hidden_size=tok.shape[1],
                          intermediate_size=tensors[root + "0.mlp.c_fc.weight"].shape[0], num_hidden_layers=layers,
                          num_attention_heads=heads, max_position_embeddings=positions,
                          hidden_act=act, projection_dim=proj_dim, layer_norm_eps=1e-5,  # open_clip's LayerNorm
                          bos_token_id=hf_tokenizer.bos_token_id, eos_token_id=hf_tokenizer.eos_token_id,
                          pad_token_id=hf_tokenizer.pad_token_id)


def random_clip_text(cfg, tokenizer) -> CLIPTextModelWithProjection:
    hf = tokenizer.hf
    return CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=len(hf), hidden_size=cfg.width, intermediate_size=cfg.mlp_dim, num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.num_heads, max_position_embeddings=cfg.max_length, hidden_act=cfg.act,
        projection_dim=cfg.width, bos_token_id=hf.bos_token_id, eos_token_id=hf.eos_token_id,
        pad_token_id=hf.pad_token_id))


def rebuilt_clip_text(hf_config: dict) -> CLIPTextModelWithProjection:
    """The architecture a checkpoint stored (its weights come from the checkpoint)."""
    return CLIPTextModelWithProjection(AutoConfig.for_model(**hf_config))


def load_clip_text(cfg, tokenizer) -> tuple[CLIPTextModelWithProjection, LoadReport]:
    """CLIP's text tower from ``model.text.pretrained_dir`` (an OpenCLIP file or folder, or a HF CLIP folder)."""
    weights = read_weights(cfg.pretrained_dir)
    tensors = weights.tensors
    layout, p = text_layout(tensors)
    report = LoadReport(str(cfg.pretrained_dir), layout=layout)
    vocab = len(tokenizer.hf)
    if layout == "openclip":
        state = _openclip_entries(tensors, p, report)
        config = _openclip_config(tensors, p, cfg, weights.config if weights.config_name.startswith("open_clip")
                                  else None, tokenizer.hf)
    elif layout == "hf-clip":
        state = {}
        for key, value in tensors.items():
            if key == "text_projection.weight" or (p and key.startswith(p)):
                target = key
            elif not p and not key.startswith(("vision_model.", "visual_projection.", "logit_scale")):
                target = "text_model." + key  # a standalone CLIPTextModel saved by transformers 5 has no prefix
            else:
                report.other.append(key)
                continue
            state[target] = value
            report.origin[target] = [key]
        if weights.config_name != "config.json":
            raise FileNotFoundError(f"{cfg.pretrained_dir}: give the Hugging Face CLIP folder (its config.json "
                                    "says the text tower's heads and activation)")
        conf = AutoConfig.from_pretrained(str(weights.path.parent), local_files_only=True)
        config = getattr(conf, "text_config", conf)
        config.vocab_size = max(vocab, config.vocab_size)
        if "text_projection.weight" in state:  # CLIPModel's projection width is its own, not text_config's
            config.projection_dim = state["text_projection.weight"].shape[0]
    else:
        raise ValueError(f"{weights.path}: no CLIP text tower in this file (looked for OpenCLIP's token_embedding and "
                         "Hugging Face's text_model.embeddings.token_embedding)")
    if cfg.max_length > config.max_position_embeddings:
        raise ValueError(f"model.text.max_length ({cfg.max_length}) exceeds the {config.max_position_embeddings} "
                         f"positions of the CLIP text tower in {cfg.pretrained_dir}")
    if cfg.dropout is not None:
        config.attention_dropout = cfg.dropout
    model = CLIPTextModelWithProjection(config)
    own = model.state_dict()
    emb = "text_model.embeddings.token_embedding.weight"
    if emb in state and state[emb].shape[0] < own[emb].shape[0]:  # rows for tokens the tokenizer added
        rows = state[emb].shape[0]
        grown = state[emb].mean(0, keepdim=True).repeat(own[emb].shape[0], 1)
        grown[:rows] = state[emb]
        state[emb] = grown
        added = [tokenizer.hf.convert_ids_to_tokens(i) for i in range(rows, own[emb].shape[0])]
        report.notes.append(f"{emb} rows {rows}.. ({', '.join(added)}) start at the mean of the loaded rows")
    for key in [k for k in state if k not in own]:  # position ids and other buffers the module recomputes
        report.unused.extend(report.origin.pop(key, [key]))
        del state[key]
    for key, value in state.items():
        if own[key].shape != value.shape:
            raise ValueError(f"{cfg.pretrained_dir}: '{report.origin[key][0]}' has shape {tuple(value.shape)}, "
                             f"the CLIP text tower's '{key}' is {tuple(own[key].shape)}")
    model.load_state_dict(state, strict=False)
    report.loaded = sorted(state)
    report.new = sorted(set(own) - set(state))
    if report.new:
        raise ValueError(f"{cfg.pretrained_dir}: the CLIP text weights lack {report.new[:8]}")
    report.unused.sort()
    report.other.sort()
    return model, report
