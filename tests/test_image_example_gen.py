"""ImageExampleGen on good and broken image folders, through a real TFX run."""
import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfx_transfer.components.image_example_gen import ImageDataError, ImageExampleGen, image_to_example


def _png(path, mode="RGB", size=(12, 10)):
    arr = np.random.RandomState(len(str(path))).randint(0, 255, (size[1], size[0], 4), dtype=np.uint8)
    img = Image.fromarray(arr, "RGBA").convert(mode)
    img.save(path, format="PNG")


def _jpeg(path, size=(16, 16)):
    arr = np.random.RandomState(len(str(path))).randint(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format="JPEG")


def make_folder(root, classes=("cat", "dog"), per_class=6, split=None):
    for c in classes:
        d = os.path.join(root, split, c) if split else os.path.join(root, c)
        os.makedirs(d, exist_ok=True)
        for i in range(per_class):
            if i % 3 == 0:
                _jpeg(os.path.join(d, f"{i}.jpg"))
            elif i % 3 == 1:
                _png(os.path.join(d, f"{i}.png"), mode="L")  # greyscale
            else:
                _png(os.path.join(d, f"{i}.png"), mode="RGBA")


def run_example_gen(root, out, eval_fraction=0.2, **kwargs):
    from tfx import v1 as tfx

    from tfx_transfer.pipeline.data_sources import image_splits

    input_config, output_config = image_splits(str(root), eval_fraction)
    gen = ImageExampleGen(input_base=str(root), input_config=input_config,
                          output_config=output_config, **kwargs)
    pipeline = tfx.dsl.Pipeline(
        pipeline_name="eg", pipeline_root=str(out / "root"), components=[gen],
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            str(out / "md.sqlite")),
        beam_pipeline_args=["--runner=FnApiRunner"])
    tfx.orchestration.LocalDagRunner().run(pipeline)
    uri = os.path.join(out, "root", "ImageExampleGen", "examples")
    uri = os.path.join(uri, sorted(os.listdir(uri))[-1])
    return uri


def read_split(uri, split):
    files = tf.io.gfile.glob(os.path.join(uri, f"Split-{split}", "*"))
    out = []
    for rec in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        ex = tf.train.Example.FromString(rec.numpy())
        out.append({k: (v.bytes_list.value or v.int64_list.value)[0]
                    for k, v in ex.features.feature.items()})
    return out


def test_image_to_example_fields(tmp_path):
    _png(tmp_path / "x.png", mode="RGBA", size=(7, 5))
    os.makedirs(tmp_path / "zebra")
    os.rename(tmp_path / "x.png", tmp_path / "zebra" / "x.png")
    ex, reason = image_to_example(str(tmp_path / "zebra" / "x.png"), str(tmp_path))
    assert reason is None
    f = ex.features.feature
    assert f["label"].bytes_list.value[0] == b"zebra"
    assert f["filename"].bytes_list.value[0] == b"zebra/x.png"
    assert (f["height"].int64_list.value[0], f["width"].int64_list.value[0]) == (5, 7)
    assert f["image"].bytes_list.value[0] == (tmp_path / "zebra" / "x.png").read_bytes()


@pytest.mark.parametrize("payload,needle", [
    (b"", "empty file"),
    (b"this is not an image at all" * 10, "not an image"),
])
def test_bad_bytes_give_a_reason(tmp_path, payload, needle):
    os.makedirs(tmp_path / "c")
    p = tmp_path / "c" / "bad.jpg"
    p.write_bytes(payload)
    ex, (reason, _) = image_to_example(str(p), str(tmp_path))
    assert ex is None and reason == needle


def test_truncated_jpeg_is_reported(tmp_path):
    os.makedirs(tmp_path / "c")
    _jpeg(tmp_path / "c" / "ok.jpg", size=(64, 64))
    data = (tmp_path / "c" / "ok.jpg").read_bytes()
    (tmp_path / "c" / "cut.jpg").write_bytes(data[: len(data) // 3])
    ex, (reason, detail) = image_to_example(str(tmp_path / "c" / "cut.jpg"), str(tmp_path))
    assert ex is None and reason == "truncated or corrupt JPEG"
    assert "Op:" not in detail and "function_node" not in detail and "JPEG" in detail


def test_hash_split_keeps_every_good_image_and_reports_bad_ones(tmp_path):
    data = tmp_path / "data"
    make_folder(data, per_class=10)
    (data / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (data / "dog" / ".DS_Store").write_bytes(b"junk")
    uri = run_example_gen(data, tmp_path, eval_fraction=0.3, max_bad_fraction=0.2)
    train, evals = read_split(uri, "train"), read_split(uri, "eval")
    names = sorted(r["filename"].decode() for r in train + evals)
    expected = sorted(f"{c}/{f}" for c in ("cat", "dog") for f in os.listdir(data / c)
                      if f not in ("broken.jpg", ".DS_Store"))
    assert names == expected, "every good image lands in exactly one split"
    assert train and evals
    assert {r["label"] for r in train + evals} == {b"cat", b"dog"}
    skipped = json.load(open(os.path.join(uri, "skipped_files.json")))
    assert [os.path.basename(s["path"]) for s in skipped] == ["broken.jpg"]
    assert skipped[0]["reason"] == "truncated or corrupt JPEG"
    ignored = json.load(open(os.path.join(uri, "ignored_files.json")))
    assert [os.path.relpath(p, data) for p in ignored] == ["dog/.DS_Store"]
    # deterministic: the same file lands in the same split on a second run
    uri2 = run_example_gen(data, tmp_path / "again", eval_fraction=0.3, max_bad_fraction=0.2)
    assert sorted(r["filename"] for r in read_split(uri2, "eval")) == \
        sorted(r["filename"] for r in evals)


def test_train_test_folders_are_the_splits_and_groups_add_a_feature(tmp_path):
    data = tmp_path / "data"
    make_folder(data, split="train", per_class=4)
    make_folder(data, split="test", per_class=2)
    uri = run_example_gen(data, tmp_path, class_groups={"cat": "pet", "dog": "pet"})
    train, evals = read_split(uri, "train"), read_split(uri, "eval")
    assert len(train) == 8 and len(evals) == 4
    assert all(r["filename"].startswith(b"test/") for r in evals)
    assert {r["group"] for r in train} == {b"pet"}


def test_too_many_bad_files_fail_with_the_list(tmp_path):
    data = tmp_path / "data"
    make_folder(data, per_class=3)
    for i in range(3):
        (data / "cat" / f"bad{i}.png").write_bytes(b"nope")
    with pytest.raises(Exception) as e:
        run_example_gen(data, tmp_path, max_bad_fraction=0.1)
    assert "could not be decoded" in str(e.value) and "bad0.png" in str(e.value)


def test_eval_class_missing_from_train_is_an_error(tmp_path):
    data = tmp_path / "data"
    make_folder(data, split="train", classes=("cat", "dog"), per_class=2)
    make_folder(data, split="test", classes=("cat", "owl"), per_class=2)
    with pytest.raises(Exception, match="owl"):
        run_example_gen(data, tmp_path)


def test_empty_folder_is_an_error(tmp_path):
    os.makedirs(tmp_path / "data" / "cat")
    with pytest.raises(Exception, match="no image files"):
        run_example_gen(tmp_path / "data", tmp_path)
