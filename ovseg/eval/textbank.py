"""Class-name embeddings for zero-shot segmentation, cached by the caller that needs them.

A ``TextBank`` belongs to whoever scores many images with one set of class names (an evaluation, a predict
command); it is not kept on the model. Its key holds the class names, the prompt templates, the device and
the version of every tensor of the model (PyTorch bumps a tensor's version on each in-place change: an
optimizer step, ``load_state_dict``, a federated ``set_tensors``), so a bank can never outlive the weights it
was computed from.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.textcache import weights_version

__all__ = ["TextBank", "text_bank", "weights_version"]


class TextBank:
    def __init__(self, batch_size: int = 256):
        self.batch_size = batch_size
        self._key, self._bank = None, None

    @torch.no_grad()
    def __call__(self, model, class_names: list[str], templates: tuple[str, ...]) -> torch.Tensor:
        """(C, E) normalised class embeddings: the mean of each class's prompt embeddings."""
        device = model.logit_scale.device
        key = (tuple(class_names), tuple(templates), str(device), model.training, weights_version(model))
        if key != self._key:
            self._bank, self._key = text_bank(model, class_names, templates, self.batch_size), key
        return self._bank


@torch.no_grad()
def text_bank(model, class_names: list[str], templates: tuple[str, ...], batch_size: int = 256) -> torch.Tensor:
    """(C, E) normalised class embeddings, computed now (``TextBank`` caches them)."""
    device = model.logit_scale.device
    prompts = [t.format(name) for name in class_names for t in templates]
    embs = []
    for i in range(0, len(prompts), batch_size):
        ids, mask = model.tokenizer(prompts[i:i + batch_size], padding="longest")
        embs.append(model.encode_text(ids.to(device), mask.to(device)))
    emb = torch.cat(embs).reshape(len(class_names), len(templates), -1).mean(1)
    return F.normalize(emb, dim=-1)
