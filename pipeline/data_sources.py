"""Where the data comes from: image folders, TFRecord files, or tfds:NAME.

TensorFlow Datasets are exported once to TFRecords of this project's schema
(image bytes, class name, file name, size) so that the pipeline reads every
source through the same ExampleGen contract.
"""
from __future__ import annotations

import io
import logging
import os

from pipeline.config import RunConfig

log = logging.getLogger("tfx_transfer")


class DataSourceError(RuntimeError):
    pass


def prepare(config: RunConfig) -> RunConfig:
    data = config.data
    if data.startswith("tfds:"):
        return config.replace(data=export_tfds(data[len("tfds:"):], os.path.join(config.output, "tfds")))
    if "*" not in data and not os.path.exists(data) and "://" not in data:
        raise DataSourceError(f"data {data} does not exist")
    return config


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
    label_names = builder.info.features["label"].names
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
                    "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[buf.getvalue()])),
                    "label": tf.train.Feature(bytes_list=tf.train.BytesList(
                        value=[label_names[int(ex["label"])].encode()])),
                    "filename": tf.train.Feature(bytes_list=tf.train.BytesList(
                        value=[f"{split}/{i}".encode()])),
                    "height": tf.train.Feature(int64_list=tf.train.Int64List(value=[h])),
                    "width": tf.train.Feature(int64_list=tf.train.Int64List(value=[w])),
                }
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature))
                             .SerializeToString())
    open(os.path.join(target, "_DONE"), "w").close()
    return target
