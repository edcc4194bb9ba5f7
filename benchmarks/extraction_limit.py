"""The Trainer's feature extraction against the backbone's own forward pass.

In one process, same threads, batch and resolution, the rows interleaved
(limit, trainer, input, limit again) so that a change in machine load shows:
  limit    the pooled backbone (the Trainer's feature model) in one
           tf.function on a batch already in memory: no input pipeline
  trainer  trainer.image_dataset (TFX's tf.data reader, the Transform graph:
           decode + resize + normalisation) into trainer.cached_features,
           exactly what run_fn does, on the first --images train examples
           (default 50,000: the whole CIFAR-10 train split)
  input    the same input pipeline alone, no backbone: what it can deliver

    python benchmarks/extraction_limit.py --examples RUN/pipeline_root/ImageExampleGen/examples/1 \
        --transform-graph RUN/pipeline_root/Transform/transform_graph/6 --weights FILE.h5

Writes benchmarks/results/extraction_limit.{json,md}.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from tfx_transfer.modules import keras_compat  # noqa: F401,E402

import tensorflow as tf  # noqa: E402
import tensorflow_transform as tft  # noqa: E402
import tf_keras as keras  # noqa: E402

from tfx_transfer.modules import trainer  # noqa: E402
from tfx_transfer.modules.config import ModelConfig  # noqa: E402
from fixed_costs import write_results  # noqa: E402


def data_accessor(examples_uri):
    from tfx.components.trainer.fn_args_utils import DataAccessor
    from tfx.components.util import tfxio_utils
    from tfx.types import standard_artifacts

    artifact = standard_artifacts.Examples()
    artifact.uri = examples_uri
    artifact.split_names = '["train", "eval"]'
    return DataAccessor(
        tf_dataset_factory=tfxio_utils.get_tf_dataset_factory_from_artifact([artifact], []),
        record_batch_factory=None, data_view_decode_fn=None)


def limit_row(extract, size, batch, seconds):
    x = tf.random.uniform([batch, size, size, 3], -1.0, 1.0)
    extract(x).numpy()  # trace and warm up
    n, start = 0, time.time()
    while time.time() - start < seconds:
        extract(x).numpy()
        n += batch
    return n / (time.time() - start)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--examples", required=True, help="an ImageExampleGen Examples artefact folder")
    p.add_argument("--transform-graph", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=128)
    # The whole CIFAR-10 train split by default: a shorter window is dominated
    # by its start (the reader fills a 10,000-example shuffle buffer before
    # the first batch): 12,800 images read 0.76 where the whole split reads 0.92.
    p.add_argument("--images", type=int, default=50_000, help="train examples the trainer row reads")
    p.add_argument("--limit-seconds", type=float, default=30.0)
    p.add_argument("--out", default=os.path.join(HERE, "results", "extraction_limit"))
    args = p.parse_args()

    tfo = tft.TFTransformOutput(args.transform_graph)
    classes = len(tfo.vocabulary_by_name("label"))
    model, _, _ = trainer.build_model(ModelConfig(backbone="MobileNetV2",
                                                  image_size=args.image_size),
                                      classes, os.path.abspath(args.weights))
    feature_model = keras.Model(model.input, model.get_layer("pool").output)
    extract = tf.function(lambda x: feature_model(x, training=False))
    accessor = data_accessor(args.examples)
    pattern = os.path.join(args.examples, "Split-train", "*")
    steps = max(1, args.images // args.batch_size)

    def images():
        return trainer.image_dataset(pattern, accessor, tfo, args.batch_size, classes,
                                     shuffle=True, seed=42).take(steps)

    rows = []
    rows.append({"row": "limit", "img_s": limit_row(extract, args.image_size, args.batch_size,
                                                    args.limit_seconds)})
    print(rows[-1], flush=True)
    work = tempfile.mkdtemp(prefix="extraction_limit_")
    try:
        _, n, seconds = trainer.cached_features(images(), extract, os.path.join(work, "f"), "train")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows.append({"row": "trainer", "img_s": n / seconds, "images": n, "seconds": seconds})
    print(rows[-1], flush=True)
    start, n = time.time(), 0
    for _, y in images():
        n += int(y.shape[0])
    rows.append({"row": "input", "img_s": n / (time.time() - start), "images": n})
    print(rows[-1], flush=True)
    rows.append({"row": "limit (again)", "img_s": limit_row(extract, args.image_size,
                                                            args.batch_size, args.limit_seconds)})
    print(rows[-1], flush=True)

    limit = (rows[0]["img_s"] + rows[3]["img_s"]) / 2
    result = {"image_size": args.image_size, "batch_size": args.batch_size,
              "threads": {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                          "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
                          "cpus": os.cpu_count()},
              "load_avg": os.getloadavg(), "rows": rows,
              "trainer_over_limit": round(rows[1]["img_s"] / limit, 3)}
    lines = ["| row | img/s | fraction of the forward-pass limit |", "|---|---|---|"]
    lines += [f"| {r['row']} | {r['img_s']:.0f} | {r['img_s'] / limit:.2f} |" for r in rows]
    write_results(args.out, result, "\n".join(lines),
                  f"Extraction vs. the backbone's forward pass (load {result['load_avg']})",
                  f"MobileNetV2 {args.image_size} px, batch {args.batch_size}\n\n")

if __name__ == "__main__":
    main()
