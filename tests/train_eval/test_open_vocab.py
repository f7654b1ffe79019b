"""Open-vocabulary evaluation: a benchmark scored under other class names, and the world's unseen names."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest

from ovseg.data.benchmarks.registry import build_benchmark, load_class_names, rename_classes
from ovseg.eval.evaluate import evaluate, parse_eval_sets


@pytest.fixture(scope="module")
def world(make_world):
    return make_world(seed=5, num_train=200, num_val=6, num_seg=0, shard_size=100)


def test_identity_mapping_scores_the_same(debug_model, debug_cfg, world):
    bench = build_benchmark("synthetic", world / "val")
    same = rename_classes(bench, {c: c for c in bench.class_names[1:]}, "same")
    a = evaluate(debug_model, bench, protocol=debug_cfg.eval, bg_thresh=debug_cfg.eval.bg_thresh)
    b = evaluate(debug_model, same, protocol=debug_cfg.eval, bg_thresh=debug_cfg.eval.bg_thresh)
    assert np.array_equal(a.confusion.matrix, b.confusion.matrix) and a.miou == b.miou


def test_swapped_names_swap_the_predictions(debug_model, debug_cfg, world):
    """Prompting cat with 'dog' and dog with 'cat' must move every cat prediction to dog and back: the class
    bank's rows are permuted, nothing else changes (reference: the canonical confusion matrix, columns swapped)."""
    bench = build_benchmark("synthetic", world / "val")
    i, j = bench.class_names.index("cat"), bench.class_names.index("dog")
    swapped = rename_classes(bench, {"cat": "dog", "dog": "cat"})
    a = evaluate(debug_model, bench, protocol=debug_cfg.eval, bg_thresh=debug_cfg.eval.bg_thresh).confusion.matrix
    b = evaluate(debug_model, swapped, protocol=debug_cfg.eval, bg_thresh=debug_cfg.eval.bg_thresh).confusion.matrix
    want = a.copy()
    want[:, [i, j]] = a[:, [j, i]]
    assert np.array_equal(b, want)


def test_unseen_names_never_appear_in_a_caption(world):
    manifest = json.loads((world / "manifest.json").read_text())
    unseen = manifest["unseen_names"]
    assert set(unseen) == set(manifest["classes"][1:])
    words = set()
    for shard in sorted((world / "train").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".txt"):
                    words.update(w.strip(".,!:").lower() for w in tar.extractfile(m).read().decode().split())
    assert words, "no caption read"
    assert not {n.lower() for n in unseen.values()} & words
    bench = build_benchmark("synthetic-unseen", world / "val")
    canonical = build_benchmark("synthetic", world / "val")
    assert bench.name == "synthetic-unseen" and bench.items == canonical.items
    assert bench.class_names == ["background", *(unseen[c] for c in canonical.class_names[1:])]


def test_class_name_files_and_their_errors(world, tmp_path):
    bench = build_benchmark("synthetic", world / "val")
    yaml_file = tmp_path / "syn.yaml"
    yaml_file.write_text("cat: kitten\nbicycle: tandem\n")
    benches = parse_eval_sets(["synthetic"], world / "val", class_names=[f"synthetic={yaml_file}"])
    assert [b.name for b in benches] == ["synthetic", "synthetic-syn"]
    renamed = benches[1].class_names
    assert renamed[bench.class_names.index("cat")] == "kitten" and renamed[0] == "background"
    assert renamed[bench.class_names.index("dog")] == "dog"  # unmapped classes keep their names

    txt = tmp_path / "list.txt"
    txt.write_text("\n".join(["background", *[f"thing {k}" for k in range(len(bench.class_names) - 1)]]) + "\n")
    assert load_class_names(txt, bench)[bench.class_names[1]] == "thing 0"
    txt.write_text("background\ncat\n")
    with pytest.raises(ValueError, match="2 names for the 11 classes"):
        load_class_names(txt, bench)
    with pytest.raises(ValueError, match="has no class.*'giraffe'"):
        rename_classes(bench, {"giraffe": "zebra"}, source="m.yaml")
    with pytest.raises(ValueError, match="cannot be renamed"):
        rename_classes(bench, {"background": "sky"})
    with pytest.raises(ValueError, match="share a name"):
        rename_classes(bench, {"cat": "dog"})
    with pytest.raises(ValueError, match="not evaluated"):
        parse_eval_sets(["synthetic"], world / "val", class_names=[f"voc={yaml_file}"])
    with pytest.raises(ValueError, match="DATASET=FILE"):
        parse_eval_sets(["synthetic"], world / "val", class_names=[str(yaml_file)])
