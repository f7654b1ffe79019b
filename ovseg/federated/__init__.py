"""Federated training, framework-free: what travels, how updates are checked, partner sites and their kinds.

    exchange.py  the exchange set (trainable tensors, frozen-tower fingerprint) and the site model
    wire.py      float32 / bfloat16 transport and the per-site update check
    kinds.py     the registry of site kinds (caption, segmentation): shard folder, batches, split rule
    sites.py     a site's folder, its round (``local_train``) and its own evaluation
    split.py     cutting a synthetic world into non-IID sites (simulations, tests)

The Flower glue (``ovseg.integrations.flower``) and the Flower app (``clients/``) call these; nothing here
imports Flower, so every rule is unit-tested on plain tensors.
"""

from ..lazy import lazy_exports

# imported on first use (ovseg/lazy.py): the site's privacy guard reads wire's names without importing torch
__getattr__, __dir__ = lazy_exports(__name__, {
    **dict.fromkeys(["build_site_model", "exchange_keys", "frozen_fingerprint", "frozen_prefixes", "get_tensors",
                     "set_tensors"], ".exchange"),
    **dict.fromkeys(["KINDS", "SiteKind", "register"], ".kinds"),
    **dict.fromkeys(["SITE_FILE", "Site", "local_train", "proximal_term", "site_evaluate"], ".sites"),
    **dict.fromkeys(["BF16_WIRE", "TRANSPORTS", "check_update", "decode_tensor", "encode_tensor"], ".wire")})

__all__ = ["BF16_WIRE", "KINDS", "SITE_FILE", "TRANSPORTS", "Site", "SiteKind", "build_site_model", "check_update",
           "decode_tensor", "encode_tensor", "exchange_keys", "frozen_fingerprint", "frozen_prefixes", "get_tensors",
           "local_train", "proximal_term", "register", "set_tensors", "site_evaluate"]
