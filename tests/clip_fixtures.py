"""A tiny CLIP tokenizer folder for tests: CLIP's byte-level BPE format (vocab.json + merges.txt) with every byte
as a token, a few merges and CLIP's two special tokens, which transformers' CLIPTokenizer reads offline.

The byte -> printable character table is GPT-2's (the one CLIP's simple_tokenizer.py bytes_to_unicode uses):
printable Latin-1 bytes stand for themselves, the others are shifted to 256 + n in byte order.
"""

from __future__ import annotations

import json
from pathlib import Path

MERGES = ["c a", "ca t</w>", "d o", "do g</w>", "o n</w>"]


def byte_chars() -> list[str]:
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, n = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return [table[b] for b in range(256)]


def write_clip_tokenizer(folder: Path) -> Path:
    """vocab.json + merges.txt in ``folder``: 256 bytes, 256 word-final bytes, the merges, then the specials."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = byte_chars()
    tokens = chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]  # the end-of-text token has the highest id, as in CLIP's
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    return folder
