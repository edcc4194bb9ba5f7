"""Where the data comes from, and which ExampleGen reads it.

All routing happens here, on tf.io.gfile, so a gs:// or s3:// folder, a glob
and a local folder are told apart the same way:

    tfds:NAME                     exported once to TFRecords, then as below
    DIR of *.tfrecord* files      ImportExampleGen (train*/eval*|test* files are the splits)
    GLOB of TFRecord files        ImportExampleGen, hash split
    DIR/train/<class>/ + DIR/test/ (or eval/)   ImageExampleGen, those splits
    DIR/<class>/<image>           ImageExampleGen, hash split of the file names

A Kubeflow pipeline gets its data root as a runtime parameter: the layout is
decided from the compile-time default (or `data_layout`), the folder is read
where the pipeline runs.
"""
from __future__ import annotations

import io
import logging
import os
from typing import Optional

from tfx_transfer.modules import contract
from tfx_transfer.pipeline.config import RunConfig

log = logging.getLogger("tfx_transfer")
TRAIN_DIRS = ("train",)
EVAL_DIRS = ("test", "eval")
GLOB_CHARS = "*?["


class DataSourceError(RuntimeError):
    pass


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def _data_files(names):
    # "_DONE"-style markers and hidden files are not data.
    return [n.rstrip("/") for n in names if not os.path.basename(n.rstrip("/")).startswith((".", "_"))]


def is_glob(data: str) -> bool:
    return any(c in data for c in GLOB_CHARS)


def is_tfrecord_input(data: str) -> bool:
    """A glob or folder whose data files are all TFRecords."""
    gfile = _gfile()
    try:
        if is_glob(data):
            files = _data_files(gfile.glob(data))
        elif gfile.isdir(data):
            files = _data_files(gfile.listdir(data))
        else:
            return False
    except Exception:  # noqa: BLE001 -- unlistable here (credentials): decided by data_layout
        return False
    return bool(files) and all(".tfrecord" in os.path.basename(f) for f in files)


def prepare(config: RunConfig) -> RunConfig:
    """The config with data that the pipeline can read: tfds exported, existence checked."""
    data = config.data.data
    if data.startswith("tfds:"):
        return config.replace(data=export_tfds(data[len("tfds:"):],
                                               os.path.join(config.deploy.output, "tfds")))
    if "://" in data:
        return config  # object stores are checked where the pipeline runs
    if is_glob(data):
        if not _gfile().glob(data):
            raise DataSourceError(f"data {data}: no file matches")
    elif not os.path.exists(data):
        raise DataSourceError(f"data {data} does not exist")
    return config


def tfrecord_splits(data: str, eval_fraction: float):
    """(input_base, input_config, output_config) for TFRecord files of tf.Examples.

    Files named train* and eval*/test* are the splits; otherwise a hash of the
    file name splits the records like an image folder."""
    from tfx.proto import example_gen_pb2

    from tfx_transfer.components.image_example_gen import hash_split_config

    if is_glob(data):
        base, pattern = os.path.split(data)
        single = example_gen_pb2.Input(splits=[
            example_gen_pb2.Input.Split(name="single_split", pattern=pattern)])
        return base, single, hash_split_config(eval_fraction, partition_feature=None)
    files = [os.path.basename(f) for f in _data_files(_gfile().listdir(data))]
    train = [f for f in files if f.startswith("train")]
    evals = [f for f in files if f.startswith(EVAL_DIRS)]
    if train and evals:
        eval_prefix = "eval" if any(f.startswith("eval") for f in evals) else "test"
        return data, example_gen_pb2.Input(splits=[
            example_gen_pb2.Input.Split(name="train", pattern="train*"),
            example_gen_pb2.Input.Split(name="eval", pattern=f"{eval_prefix}*")]), None
    single = example_gen_pb2.Input(splits=[example_gen_pb2.Input.Split(name="single_split", pattern="*")])
    return data, single, hash_split_config(eval_fraction, partition_feature=None)


def image_splits(data_dir: str, eval_fraction: float = 0.2, layout: str = "auto"):
    """(input_config, output_config) for an image folder.

    Existing train/ and test/ (or eval/) folders are the splits; otherwise a
    deterministic hash of the file name splits one folder. layout "folders"
    (train/ + test/) or "hash" says so without listing data_dir, which a
    pipeline compiled for a cluster may not be able to do.
    """
    from tfx.proto import example_gen_pb2

    from tfx_transfer.components.image_example_gen import hash_split_config

    if layout == "folders":
        subdirs = {TRAIN_DIRS[0], EVAL_DIRS[0]}
    elif layout == "hash":
        subdirs = set()
    else:
        import tensorflow as tf

        try:
            subdirs = {os.path.basename(d.rstrip("/")) for d in tf.io.gfile.listdir(data_dir)}
        except tf.errors.OpError as e:
            raise DataSourceError(
                f"cannot list {data_dir} to find its layout ({type(e).__name__}: {e.message}); "
                "if it exists where the pipeline runs, set data_layout to 'folders' "
                "(train/ + test/) or 'hash'") from e
    train = next((d for d in TRAIN_DIRS if d in subdirs), None)
    evald = next((d for d in EVAL_DIRS if d in subdirs), None)
    if train and evald:
        return example_gen_pb2.Input(splits=[
            example_gen_pb2.Input.Split(name="train", pattern=f"{train}/*/*"),
            example_gen_pb2.Input.Split(name="eval", pattern=f"{evald}/*/*"),
        ]), None
    return (example_gen_pb2.Input(splits=[example_gen_pb2.Input.Split(name="single_split",
                                                                      pattern="*/*")]),
            hash_split_config(eval_fraction))


def example_gen(config: RunConfig, data_root=None):
    """The ExampleGen for config's data. data_root: a Kubeflow RuntimeParameter
    that replaces the folder at run time (its layout is that of config's data)."""
    from tfx.components import ImportExampleGen

    from tfx_transfer.components.image_example_gen import ImageExampleGen

    d = config.data
    if is_tfrecord_input(d.data):
        base, input_config, output_config = tfrecord_splits(d.data, d.eval_fraction)
        if data_root is not None and is_glob(d.data):
            raise DataSourceError("a glob of TFRecord files cannot be a runtime parameter: "
                                  "give the folder that holds them")
        return ImportExampleGen(
            input_base=data_root if data_root is not None else base,
            input_config=input_config, output_config=output_config)
    input_config, output_config = image_splits(d.data, d.eval_fraction, d.data_layout)
    return ImageExampleGen(
        input_base=data_root if data_root is not None else d.data,
        input_config=input_config, output_config=output_config,
        max_bad_fraction=d.max_bad_fraction, class_groups=d.class_groups,
        image_budget=d.image_budget())


def class_count(data: str) -> Optional[int]:
    """Number of classes when it can be known before running (image folders)."""
    gfile = _gfile()
    try:
        if is_glob(data) or not gfile.isdir(data) or is_tfrecord_input(data):
            return None
        root = os.path.join(data, TRAIN_DIRS[0]) if gfile.isdir(os.path.join(data, TRAIN_DIRS[0])) \
            else data
        return len([d for d in _data_files(gfile.listdir(root)) if gfile.isdir(os.path.join(root, d))])
    except Exception:  # noqa: BLE001 -- not listable from here
        return None


def export_tfds(name: str, out_dir: str) -> str:
    """Writes tfds NAME as TFRecords under out_dir/NAME/ (once) and returns that folder."""
    target = os.path.join(out_dir, name.replace("/", "_"))
    if os.path.exists(os.path.join(target, "_DONE")):
        return target
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataSourceError(
            f"tfds:{name} needs tensorflow-datasets: pip install -c constraints.txt "
            "tensorflow-datasets") from None
    import tensorflow as tf
    from PIL import Image

    builder = tfds.builder(name)
    try:
        builder.download_and_prepare()
    except Exception as e:  # noqa: BLE001 -- any download failure: say offline, keep cause
        raise DataSourceError(
            f"TensorFlow Datasets could not download or prepare {name!r} "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200]}). This machine may be offline: "
            f"prepare it where there is network (`tfds build {name}`) and copy "
            f"{builder.data_dir} here, or export it as an image folder.") from None
    label_names = builder.info.features["label"].names  # tfds' own feature names
    os.makedirs(target, exist_ok=True)
    for split, out_split in (("train", "train"), ("test", "eval")):
        if split not in builder.info.splits:
            continue
        path = os.path.join(target, f"{out_split}.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for i, ex in enumerate(tfds.as_numpy(builder.as_dataset(split=split))):
                buf = io.BytesIO()
                Image.fromarray(ex["image"].squeeze() if ex["image"].shape[-1] == 1
                                else ex["image"]).save(buf, format="PNG")
                h, w = ex["image"].shape[:2]
                feature = {
                    contract.IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[buf.getvalue()])),
                    contract.LABEL_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(
                        value=[label_names[int(ex["label"])].encode()])),
                    contract.FILENAME_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(
                        value=[f"{split}/{i}".encode()])),
                    contract.HEIGHT_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[h])),
                    contract.WIDTH_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[w])),
                }
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature))
                             .SerializeToString())
    open(os.path.join(target, "_DONE"), "w").close()
    return target
