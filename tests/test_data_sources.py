"""TFRecord folders and tfds:NAME as pipeline inputs."""
import os

import pytest
import tensorflow as tf
from tfx.proto import example_gen_pb2
from tfx.utils import proto_utils

from tfx_transfer.components.image_example_gen import image_to_example
from conftest import SAMPLE
from tfx_transfer.pipeline import data_sources
from tfx_transfer.pipeline.config import RunConfig
from tfx_transfer.pipeline.data_sources import example_gen, is_tfrecord_input


def _proto(value, message):
    if isinstance(value, str):
        return proto_utils.json_to_proto(value, message)
    return value


def write_records(path, split_dir, limit=20):
    with tf.io.TFRecordWriter(path) as w:
        for cls in sorted(os.listdir(split_dir)):
            for f in sorted(os.listdir(os.path.join(split_dir, cls)))[: limit // 10]:
                ex, _ = image_to_example(os.path.join(split_dir, cls, f), split_dir)
                w.write(ex.SerializeToString())


def test_tfrecord_folder_with_train_and_eval_files(tmp_path):
    write_records(str(tmp_path / "train.tfrecord"), os.path.join(SAMPLE, "train"))
    write_records(str(tmp_path / "eval.tfrecord"), os.path.join(SAMPLE, "test"))
    (tmp_path / "_DONE").write_text("")
    assert is_tfrecord_input(str(tmp_path))
    gen = example_gen(RunConfig.from_dict({"data": str(tmp_path)}))
    splits = _proto(gen.exec_properties["input_config"], example_gen_pb2.Input()).splits
    assert [(s.name, s.pattern) for s in splits] == [("train", "train*"), ("eval", "eval*")]


def test_tfrecord_folder_without_splits_is_hash_split(tmp_path):
    write_records(str(tmp_path / "all.tfrecord"), os.path.join(SAMPLE, "train"))
    gen = example_gen(RunConfig.from_dict({"data": str(tmp_path), "eval_fraction": 0.25}))
    output = _proto(gen.exec_properties["output_config"], example_gen_pb2.Output())
    buckets = {s.name: s.hash_buckets for s in output.split_config.splits}
    assert buckets == {"train": 75, "eval": 25}


def test_image_folder_is_not_tfrecord_input():
    assert not is_tfrecord_input(SAMPLE)


def test_glob_of_tfrecords_routes_to_import_example_gen(tmp_path):
    write_records(str(tmp_path / "part-0.tfrecord"), os.path.join(SAMPLE, "train"))
    write_records(str(tmp_path / "part-1.tfrecord"), os.path.join(SAMPLE, "test"))
    pattern = str(tmp_path / "part-*.tfrecord")
    assert is_tfrecord_input(pattern)
    gen = example_gen(RunConfig.from_dict({"data": pattern}))
    assert type(gen).__name__ == "ImportExampleGen"
    assert gen.exec_properties["input_base"] == str(tmp_path)
    splits = _proto(gen.exec_properties["input_config"], example_gen_pb2.Input()).splits
    assert [(s.name, s.pattern) for s in splits] == [("single_split", "part-*.tfrecord")]


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(data_sources.DataSourceError, match="does not exist"):
        data_sources.prepare(RunConfig.from_dict({"data": str(tmp_path / "nope")}))


@pytest.mark.slow  # tfds retries its downloads for minutes before giving up offline
@pytest.mark.timeout(600)
def test_tfds_offline_is_a_clear_error(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow_datasets")
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    try:
        out = data_sources.export_tfds("cifar10", str(tmp_path / "out"))
    except data_sources.DataSourceError as e:
        assert "cifar10" in str(e) and "offline" in str(e)
    else:  # a machine with network really downloads it
        assert os.path.exists(os.path.join(out, "train.tfrecord"))
