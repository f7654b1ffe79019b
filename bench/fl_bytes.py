"""Bytes one site sends per round (its update), for the tiny and the paper's model, three ways.

    python bench/fl_bytes.py [--configs tiny,vit-b16-cc4m]

full fp32: every floating-point tensor of the model state (what naive FedAvg of state_dict() ships);
trainable fp32: the exchange set (trainable parameters + projector BatchNorm statistics; the frozen text
tower and the momentum encoder stay home); trainable bf16: the same at half precision. Bytes are those of
Flower's ArrayRecord (numpy .npy payloads + key names), serialised for real.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="tiny,vit-b16-cc4m")
    args = p.parse_args()
    from ovseg.config import load_config
    from ovseg.federated import build_site_model, exchange_keys
    from ovseg.integrations.flower import to_record

    print(f"{'config':14s} {'tensors':>8s} {'full fp32 MB':>13s} {'trainable fp32 MB':>18s} "
          f"{'trainable bf16 MB':>18s} {'saving':>7s}")
    for name in args.configs.split(","):
        t0 = time.perf_counter()
        model, cfg = build_site_model(load_config(name))
        sd = model.state_dict()
        floats = {k: v for k, v in sd.items() if v.dtype.is_floating_point}
        keys = exchange_keys(model, cfg)
        full = to_record(floats, "float32").count_bytes()
        train32 = to_record({k: sd[k] for k in keys}, "float32").count_bytes()
        train16 = to_record({k: sd[k] for k in keys}, "bfloat16").count_bytes()
        print(f"{name:14s} {len(keys):8d} {full / 1e6:13.2f} {train32 / 1e6:18.2f} {train16 / 1e6:18.2f} "
              f"{full / train16:6.1f}x   ({time.perf_counter() - t0:.0f} s)", flush=True)
        del model, sd, floats
        torch.cuda.empty_cache() if torch.cuda.is_available() else None


if __name__ == "__main__":
    main()
