"""The image budget and EXIF orientation, in ImageExampleGen and in the server (issue #12)."""
import io
import json
import os

import grpc
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

import bad_images
from tfx_transfer.components.image_example_gen import image_to_example
from tfx_transfer.modules import image_budget
from tfx_transfer.modules.image_budget import ImageBudget, NotAnImage, OverBudget

# Smaller bombs than the benchmark's (same headers, a fraction of the generation time).
SMALL_PNG_BOMB = bad_images.png_bomb(5000, 5000)  # 25 M pixels > 16.7 M
GIF_MANY_FRAMES = bad_images.gif_bomb(frames=300, size=16)  # frames only
GIF_MANY_BYTES = bad_images.gif_bomb(frames=40, size=2000)  # 40 x 12 MB decoded


@pytest.fixture(scope="module")
def files():
    return bad_images.bad_file_set(bombs=False)


def test_headers_agree_with_pil(files):
    for name, (data, expected) in files.items():
        if expected != "ok":
            continue
        header = image_budget.read_header(data)
        with Image.open(io.BytesIO(data)) as im:
            assert (header.width, header.height) == im.size, name
            assert header.frames == getattr(im, "n_frames", 1), name
    assert image_budget.read_header(files["sixteen_bit.png"][0]).bytes_per_sample == 2
    assert image_budget.read_header(files["exif_rotated.jpg"][0]).orientation == 6
    assert image_budget.read_header(files["cmyk.jpg"][0]).channels == 4


def test_bomb_headers():
    h = image_budget.read_header(bad_images.png_bomb(20000, 20000))
    assert (h.format, h.width, h.height) == ("PNG", 20000, 20000)
    h = image_budget.read_header(bad_images.gif_bomb(frames=400, size=2000))
    assert (h.format, h.width, h.height, h.frames) == ("GIF", 2000, 2000, 400)
    assert h.decoded_bytes == 400 * 2000 * 2000 * 3


@pytest.mark.parametrize("data,needle", [
    (SMALL_PNG_BOMB, "5000x5000 pixels is over the budget of 16777216 pixels"),
    (GIF_MANY_FRAMES, "300 frames is over the budget of 256 frames"),
    (GIF_MANY_BYTES, "decodes to 457 MiB, over the budget of 256 MiB"),
])
def test_over_budget_names_the_limit(data, needle):
    with pytest.raises(OverBudget, match=needle):
        image_budget.check(data)


def test_budget_is_configurable():
    assert image_budget.check(GIF_MANY_FRAMES, ImageBudget(max_frames=300)).frames == 300
    with pytest.raises(OverBudget, match="over the budget of 100 pixels"):
        image_budget.check(bad_images.encode(bad_images.photo((11, 10)), "PNG"),
                           ImageBudget(max_pixels=100))


def test_gif_frame_larger_than_its_canvas_counts():
    data = bytearray(bad_images.gif_bomb(frames=1, size=5000))
    data[6:10] = (1).to_bytes(2, "little") * 2  # a 1x1 canvas around a 5000x5000 frame
    with pytest.raises(OverBudget, match="pixels"):
        image_budget.check(bytes(data))


@pytest.mark.parametrize("data", [b"", b"GIF89a", b"\x89PNG\r\n\x1a\n\0\0", b"\xff\xd8\xff\xd9",
                                  b"BM" + b"\0" * 10, b"RIFF....WEBPVP8 "])
def test_garbage_is_not_an_image(data):
    with pytest.raises(NotAnImage):
        image_budget.check(data)


PLAIN_REASONS = {"truncated.jpg": "truncated or corrupt JPEG", "empty.jpg": "empty file",
                 "text.png": "not an image", "bomb.png": "over the image budget",
                 "bomb.gif": "over the image budget"}


def test_image_to_example_on_the_bad_file_set(tmp_path):
    files = bad_images.bad_file_set(bombs=False)
    files["bomb.png"] = (SMALL_PNG_BOMB, "skip-budget")
    files["bomb.gif"] = (GIF_MANY_BYTES, "skip-budget")
    os.makedirs(tmp_path / "c")
    for name, (data, expected) in files.items():
        path = tmp_path / "c" / name
        path.write_bytes(data)
        example, why = image_to_example(str(path), str(tmp_path))
        if expected == "ok":
            assert why is None, (name, why)
            f = example.features.feature
            assert f["filename"].bytes_list.value[0].decode() == f"c/{name}"
            pixels = tf.io.decode_image(f["image"].bytes_list.value[0], channels=3,
                                        expand_animations=False).numpy()
            assert pixels.shape[:2] == (f["height"].int64_list.value[0],
                                        f["width"].int64_list.value[0]), name
        else:
            assert example is None, name
            reason, detail = why
            assert reason == PLAIN_REASONS[name], (name, why)  # one plain phrase
            assert "Op:" not in (detail or "") and "function_node" not in (detail or ""), detail


def test_exif_rotated_jpeg_is_stored_upright(tmp_path, files):
    os.makedirs(tmp_path / "c")
    path = tmp_path / "c" / "phone.jpg"
    path.write_bytes(files["exif_rotated.jpg"][0])
    example, _ = image_to_example(str(path), str(tmp_path))
    stored = example.features.feature["image"].bytes_list.value[0]
    pixels = tf.io.decode_image(stored, channels=3).numpy().astype(int)
    with Image.open(path) as im:
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB")).astype(int)
    # 48x32 taken sideways: upright it is 32 wide, 48 high, bright band on top.
    assert pixels.shape == expected.shape == (48, 32, 3)
    assert np.abs(pixels - expected).mean() < 3
    assert pixels[:16].mean() > 150 > 60 > pixels[16:].mean()
    assert image_budget.read_header(stored).orientation == 1
    assert image_budget.upright(files["gray.png"][0]) is files["gray.png"][0]


def _server_check(values, kind="images"):
    from tfx_transfer.serving import server, signatures as sigs

    key = sigs.IMAGES_INPUT if kind == "images" else sigs.EXAMPLES_INPUT
    arr = np.array(values, dtype=object)
    server._check_images(key, kind, arr, server.Limits())
    return arr


def test_server_serves_the_upright_bytes_training_stored(tmp_path, files):
    from tfx_transfer.serving import signatures as sigs

    rotated = files["exif_rotated.jpg"][0]
    os.makedirs(tmp_path / "c")
    (tmp_path / "c" / "x.jpg").write_bytes(rotated)
    example, _ = image_to_example(str(tmp_path / "c" / "x.jpg"), str(tmp_path))
    trained_on = example.features.feature["image"].bytes_list.value[0]
    plain = files["gray.png"][0]
    assert list(_server_check([plain, rotated])) == [plain, trained_on]
    served = _server_check([sigs.image_example(rotated)], kind="examples")[0]
    assert sigs.image_of_example(served) == trained_on


@pytest.mark.parametrize("data,code", [
    (SMALL_PNG_BOMB, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (bad_images.gif_bomb(frames=400, size=2000), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (b"not an image", grpc.StatusCode.INVALID_ARGUMENT),
])
def test_server_refuses_bombs_before_decoding(data, code):
    from tfx_transfer.serving import server

    with pytest.raises(server.RequestError) as e:
        _server_check([bad_images.encode(bad_images.photo(), "PNG"), data])
    assert e.value.code == code and "images[1]" in str(e.value)


@pytest.mark.e2e
def test_example_gen_run_reports_every_bad_file(tmp_path):
    from test_image_example_gen import make_folder, read_split, run_example_gen

    data = tmp_path / "data"
    make_folder(data, per_class=8)
    files = bad_images.bad_file_set(bombs=False)
    files["bomb.png"] = (SMALL_PNG_BOMB, "skip-budget")
    files["bomb.gif"] = (GIF_MANY_BYTES, "skip-budget")
    for name, (payload, _) in files.items():
        (data / "cat" / name).write_bytes(payload)
    uri = run_example_gen(data, tmp_path, max_bad_fraction=0.5)
    listed = json.load(open(os.path.join(uri, "skipped_files.json")))
    skipped = {os.path.basename(s["path"]): s["reason"] for s in listed}
    assert sorted(skipped) == sorted(n for n, (_, e) in files.items() if e != "ok")
    # One plain phrase per file; the decoder's words (no TensorFlow op text) beside it.
    assert skipped == {n: PLAIN_REASONS[n] for n in skipped}
    assert not any("Op:" in s.get("detail", "") or "function_node" in s.get("detail", "")
                   for s in listed)
    kept = {r["filename"].decode() for s in ("train", "eval") for r in read_split(uri, s)}
    assert {f"cat/{n}" for n, (_, e) in files.items() if e == "ok"} <= kept


def test_the_config_budget_reaches_example_gen(tmp_path):
    from conftest import tiny_config
    from tfx_transfer.components.image_example_gen import _settings
    from tfx_transfer.pipeline.pipeline import create_pipeline

    pipeline = create_pipeline(tiny_config(tmp_path, max_image_pixels=1000, max_image_frames=3,
                                           max_image_mb=7))
    example_gen = pipeline.components[0]
    settings = _settings(example_gen.exec_properties["custom_config"])
    assert ImageBudget.from_dict(settings["image_budget"]) == ImageBudget(1000, 3, 7 << 20)
