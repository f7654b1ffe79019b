"""platform/predict.py: label PNGs of the input's size, overlays whose pixels and legend match the palette,
unreadable images named and skipped. References are written out here: the VOC colour map bit by bit, the
blend as plain arithmetic, the legend swatches found by colour."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw
from services import REPO, env

SCRIPT = REPO / "platform" / "predict.py"


def voc_colour(i: int) -> tuple[int, int, int]:
    """PASCAL VOC colour of class i, written out independently of ovseg.eval.evaluate.palette."""
    r = g = b = 0
    for j in range(8):
        r |= ((i >> (3 * j)) & 1) << (7 - j)
        g |= ((i >> (3 * j + 1)) & 1) << (7 - j)
        b |= ((i >> (3 * j + 2)) & 1) << (7 - j)
    return r, g, b


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch

    from ovseg import build_model, load_config, save_checkpoint

    torch.manual_seed(0)
    model = build_model("debug")
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint.safetensors", model, load_config("debug"), step=7)


def _scene(path, height=375, width=500, mode="RGB"):
    img = Image.new("RGB", (width, height), (90, 120, 90))
    draw = ImageDraw.Draw(img)
    draw.ellipse((width // 8, height // 5, width // 2, height * 3 // 4), fill=(200, 60, 40))
    draw.rectangle((width // 2, height // 3, width - 5, height - 5), fill=(40, 60, 200))
    img.convert(mode).save(path)
    with Image.open(path) as saved:  # as the script will read it (JPEG is lossy)
        return np.asarray(saved.convert("RGB"))


def _legend_swatches(panel: np.ndarray, colours):
    """For each colour: the bounding box of its pixels in the legend panel, checked to be a filled rectangle."""
    boxes = []
    for c in colours:
        ys, xs = np.nonzero((panel == np.array(c, dtype=np.uint8)).all(-1))
        assert len(ys) >= 64, f"colour {c} has {len(ys)} pixels in the legend"
        y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
        assert len(ys) == (y1 - y0 + 1) * (x1 - x0 + 1), f"colour {c} is not one solid swatch"
        boxes.append((y0, y1, x0, x1))
    return boxes


def test_label_and_overlay_pngs_match_input_size_palette_and_legend(checkpoint, tmp_path):
    image = _scene(tmp_path / "scene.jpg")
    (tmp_path / "b").mkdir()
    grey = _scene(tmp_path / "b" / "scene.png", height=61, width=97, mode="L")  # same stem, odd size, greyscale
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, str(SCRIPT), str(checkpoint), str(tmp_path / "scene.jpg"),
                          str(tmp_path / "missing.png"), str(tmp_path / "broken.jpg"), str(tmp_path / "b" / "scene.png"),
                          "--classes", "cat, dog,sky", "--out", str(out)],
                         env=env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr  # two inputs failed, the others were written
    assert f"{tmp_path / 'missing.png'}: no such file" in res.stderr
    assert f"{tmp_path / 'broken.jpg'}: not a readable image" in res.stderr
    assert "2 of 4 image(s) failed" in res.stderr
    names = ["background", "cat", "dog", "sky"]

    label_img = Image.open(out / "scene.label.png")
    assert label_img.mode == "P" and label_img.size == (500, 375)
    labels = np.array(label_img)
    assert labels.shape == (375, 500) and labels.max() < len(names)
    pal = label_img.getpalette()
    for k in range(len(names)):
        assert tuple(pal[3 * k:3 * k + 3]) == voc_colour(k)

    over = np.asarray(Image.open(out / "scene.overlay.png").convert("RGB"))
    assert over.shape[0] >= 375 and over.shape[1] > 500  # the legend panel is on the right
    colours = np.array([voc_colour(int(k)) for k in labels.ravel()], dtype=np.float64).reshape(375, 500, 3)
    expected = image.astype(np.float64) * 0.5 + colours * 0.5
    assert np.abs(over[:375, :500].astype(np.float64) - expected).max() <= 1.0

    panel = over[:, 500:]
    boxes = _legend_swatches(panel, [voc_colour(k) for k in range(len(names))])
    assert [b[0] for b in boxes] == sorted(b[0] for b in boxes)  # rows in class order, top to bottom
    assert len({b[2] for b in boxes}) == 1  # one column of swatches
    for y0, y1, x0, x1 in boxes:  # a name is written to the right of every swatch
        right = panel[y0:y1 + 1, x1 + 2:]
        assert ((right != 255).any(-1)).sum() > 10
    assert not (panel == np.array(voc_colour(len(names)), dtype=np.uint8)).all(-1).any()  # no extra class

    second = Image.open(out / "scene-1.label.png")
    assert second.size == (97, 61) and grey.shape == (61, 97, 3)
    assert Image.open(out / "scene-1.overlay.png").size[1] >= 61
    assert sorted(p.name for p in out.iterdir()) == ["scene-1.label.png", "scene-1.overlay.png",
                                                     "scene.label.png", "scene.overlay.png"]  # no temp files left


def _main():
    spec = importlib.util.spec_from_file_location("predict_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def test_no_background_and_bad_arguments(checkpoint, tmp_path, capsys):
    main = _main()
    _scene(tmp_path / "a.png", height=40, width=30)
    assert main([str(checkpoint), str(tmp_path / "a.png"), "--classes", "road,car,tree", "--no-background",
                 "--out", str(tmp_path / "o")]) == 0
    labels = np.array(Image.open(tmp_path / "o" / "a.label.png"))
    assert labels.shape == (40, 30) and labels.max() < 3
    over = np.asarray(Image.open(tmp_path / "o" / "a.overlay.png").convert("RGB"))
    _legend_swatches(over[:, 30:], [voc_colour(k) for k in range(3)])
    assert not (over[:, 30:] == np.array(voc_colour(3), dtype=np.uint8)).all(-1).any()

    assert main([str(checkpoint), str(tmp_path / "a.png"), "--classes", " , "]) == 2
    assert "names no class" in capsys.readouterr().err
    assert main([str(checkpoint), str(tmp_path / "a.png"), "--classes", "cat,cat"]) == 2
    assert "more than once" in capsys.readouterr().err
    assert main([str(tmp_path / "none.safetensors"), str(tmp_path / "a.png"), "--classes", "cat"]) == 2
    assert "none.safetensors does not exist" in capsys.readouterr().err


def test_images_after_a_huge_header_or_a_too_thin_strip_are_still_written(checkpoint, tmp_path, capsys):
    from bad_images import huge_png

    main = _main()
    (tmp_path / "bomb.png").write_bytes(huge_png(30000, 30000))  # 65 bytes claiming 900 million pixels
    Image.fromarray(np.full((1, 1000, 3), 128, np.uint8)).save(tmp_path / "strip.png")  # read at 2 x 2048
    first, after = _scene(tmp_path / "first.png", 24, 36), _scene(tmp_path / "after.png", 40, 30)
    args = [tmp_path / n for n in ("first.png", "bomb.png", "strip.png", "after.png")]
    assert main([str(checkpoint), *map(str, args), "--classes", "cat,dog", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'bomb.png'}: not a readable image" in err and "900000000 pixels" in err
    assert f"{tmp_path / 'strip.png'}: cannot be segmented (RuntimeError" in err
    assert "2 of 4 image(s) failed" in err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "after.label.png", "after.overlay.png", "first.label.png", "first.overlay.png"]
    assert Image.open(tmp_path / "o" / "after.label.png").size == (30, 40) and first.shape == (24, 36, 3)
    assert after.shape == (40, 30, 3)
