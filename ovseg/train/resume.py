"""The data side of a pretraining checkpoint: each rank's loader position and generator states (docs/data.md,
"Resuming").

A resumed run must see exactly the batches and the noise the uninterrupted run would have: the same samples,
augmentation, pairs, order and skip counts, and the same Gumbel draws. The checkpoint that rank 0 writes
therefore holds, for every rank, ``CaptionLoader.state()`` (where its shard readers, shuffle buffers and pairing
pools stand, and its loader workers' generators) and the rank's own global generators (``process_rng_state``:
the model's noise, and the augmentation when the loader runs in the training process). With several ranks
they are collected by ``WorkerEnv.gather_objects`` (an all-gather: every rank takes part at every checkpoint).

On resume each rank takes its own entry. When it cannot be used (a checkpoint written before this existed, a
world size or data that changed) the rank falls back to what resuming did before: re-reading the epoch's
consumed batches and dropping them, with a printed reason; a stored position is never applied to data it does
not fit (``CaptionLoader.resume`` checks a fingerprint of shards and settings, the workers the keys they read
back).
"""

from __future__ import annotations

from ..data.captions.rngstate import process_rng_state


def data_state(loader, env, stage: int) -> dict:
    """Every rank's loader position and generator states, in rank order (JSON-able; with several ranks and no
    ``env.gather_objects``, rank 0's alone, and the other ranks fall back on resume)."""
    own = {"loader": loader.state() if loader is not None else None, "rng": process_rng_state(env.device)}
    world = env.world_size
    if world == 1:
        ranks = [own]
    elif env.gather_objects is not None:
        ranks = list(env.gather_objects(own))
    else:
        ranks = [own] + [None] * (world - 1)
    return {"stage": stage, "world_size": world, "ranks": ranks}


def own_data_state(data, rank: int, world_size: int) -> dict | None:
    """This rank's entry of a checkpoint's ``data`` (None when the checkpoint has none: older versions), or
    ``{"why": ...}`` when it holds none for this rank."""
    if data is None:
        return None
    stored = data.get("world_size") if isinstance(data, dict) else None
    if stored != world_size:
        return {"why": f"the checkpoint's data positions are for {stored} ranks, this run has {world_size}"}
    ranks = data.get("ranks") or []
    if rank >= len(ranks) or not isinstance(ranks[rank], dict):
        return {"why": f"the checkpoint holds no data position for rank {rank}"}
    return {"stage": data.get("stage"), **ranks[rank]}


def _stored_at(state) -> tuple:
    return (state.get("epoch"), state.get("produced")) if isinstance(state, dict) else (None, None)


def position_loader(saved: dict | None, loader, *, epoch: int, batch_in_epoch: int, rank: int,
                    world_size: int) -> tuple[int, dict | None]:
    """Put a stage's loader at this rank's stored position -> (batches still to re-read and drop, the generator
    states to set just before the first batch is made). ``saved``: ``own_data_state``'s entry for this stage."""
    who = f"[ovseg] rank {rank}: " if world_size > 1 else "[ovseg] "
    skip = batch_in_epoch
    if saved is None:
        if skip and rank == 0:
            print(f"{who}data: the checkpoint holds no loader position (an older version wrote it): re-reading "
                  f"{skip} batches of epoch {epoch} to get there", flush=True)
        return skip, None
    if "why" in saved:
        print(f"{who}WARNING: {saved['why']}: re-reading {skip} batches of epoch {epoch} instead of continuing "
              "the stored loader position", flush=True)
        return skip, None
    state, why = saved.get("loader"), None
    if state is None:
        why = None if skip == 0 else "the checkpoint holds no loader position for this stage"
    elif _stored_at(state) != (epoch, skip):
        at = _stored_at(state)
        why = (f"the stored loader position (epoch {at[0]}, batch {at[1]}) is not the checkpoint's (epoch {epoch}, "
               f"batch {skip})")
    else:
        why = loader.resume(state)
    if why is not None:
        print(f"{who}WARNING: {why}: re-reading {skip} batches of epoch {epoch} instead", flush=True)
        return skip, saved.get("rng")
    if state is not None and rank == 0:
        print(f"{who}data: continuing at the stored loader position (epoch {epoch}, batch {skip}); nothing "
              "before it is re-read", flush=True)
    return 0, saved.get("rng")
