"""Per-step and per-trace overheads of training, and the resize: the session-5
[performance] changes, each against what it replaced, in one process.

  head     10 epochs (391 steps each) of the probe head on 50,000 x 1,280 cached
           features with validation: keras.Model, GraphModel (steps without
           autograph), GraphModel with HEAD_STEPS_PER_EXECUTION steps per call
  frozen   2 epochs of the full MobileNetV2 (96 px, frozen, random weights) on
           1,280 images: keras.Model steps vs GraphModel steps (the trace)
  resize   decode + resize of the bundled sample's JPEGs (32 -> 96 px):
           antialiased always (before) vs transform.decode_and_resize (after)

    python benchmarks/step_overheads.py

Writes benchmarks/results/step_overheads.{json,md}.
"""
from __future__ import annotations

import glob
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from tfx_transfer.modules import keras_compat  # noqa: F401,E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from tfx_transfer.modules import trainer, transform  # noqa: E402
from tfx_transfer.modules.config import ModelConfig, TrainingConfig  # noqa: E402
from fixed_costs import write_results  # noqa: E402


def _fit(cls, build, ds, val, steps, epochs, per_call=1):
    keras.utils.set_random_seed(1)
    inner = build()
    model = cls(inner.input, inner.output)
    trainer.compile_model(model, TrainingConfig(optimizer="sgd"), 0.01, steps, epochs, per_call)
    start = time.time()
    h = model.fit(ds, validation_data=val, epochs=epochs, verbose=0)
    return time.time() - start, h.history["loss"][-1]


def head_rows(rows):
    rng = np.random.RandomState(0)
    work = tempfile.mkdtemp()

    def cached(n, name):
        x = np.maximum(rng.randn(n, 1280), 0).astype("float32")
        y = np.eye(10, dtype="float32")[rng.randint(0, 10, n)]
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(128).cache(os.path.join(work, name))
        for _ in ds:
            pass
        return ds.apply(tf.data.experimental.assert_cardinality(-(-n // 128)))

    tr, ev = cached(50_000, "train"), cached(10_000, "eval")
    ds = (tr.unbatch().shuffle(10_000, seed=1).batch(128)
          .apply(tf.data.experimental.assert_cardinality(391)).prefetch(tf.data.AUTOTUNE))
    build = lambda: trainer.build_head(1280, 10, ModelConfig(dropout=0.0))  # noqa: E731
    for name, cls, per_call in (("keras.Model", keras.Model, 1), ("GraphModel", trainer.GraphModel, 1),
                                (f"GraphModel, {trainer.HEAD_STEPS_PER_EXECUTION} steps per call",
                                 trainer.GraphModel, trainer.HEAD_STEPS_PER_EXECUTION)):
        s, loss = _fit(cls, build, ds, ev, 391, 10, per_call)
        rows.append({"row": f"head, 10 epochs: {name}", "seconds": round(s, 1), "final_loss": loss})
        print(rows[-1], flush=True)


def frozen_rows(rows):
    rng = np.random.RandomState(0)
    x = rng.uniform(-1, 1, (1280, 96, 96, 3)).astype("float32")
    y = np.eye(10, dtype="float32")[rng.randint(0, 10, 1280)]
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(128)
    build = lambda: trainer.build_model(ModelConfig(backbone="MobileNetV2", image_size=96),  # noqa: E731
                                        10, None)[0]
    for name, cls in (("keras.Model steps", keras.Model), ("GraphModel steps", trainer.GraphModel)):
        s, loss = _fit(cls, build, ds, ds.take(2), 10, 2)
        rows.append({"row": f"frozen MobileNetV2, 2 epochs of 1,280: {name}", "seconds": round(s, 1),
                     "final_loss": loss})
        print(rows[-1], flush=True)


def resize_rows(rows):
    files = sorted(glob.glob(os.path.join(os.path.dirname(HERE), "data", "cifar10-sample", "*", "*", "*")))
    encoded = tf.constant([open(f, "rb").read() for f in files][:384])

    def antialiased(e):
        def one(data):
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
            return tf.clip_by_value(tf.image.resize(tf.cast(image, tf.float32), [96, 96],
                                                    antialias=True), 0.0, 255.0)
        return tf.map_fn(one, e, fn_output_signature=tf.TensorSpec([96, 96, 3], tf.float32))

    before = tf.function(antialiased, autograph=False)
    after = tf.function(lambda e: transform.decode_and_resize(e, 96), autograph=False)
    diff = float(np.abs(before(encoded).numpy() - after(encoded).numpy()).max())
    for _ in range(2):  # interleaved, twice
        for name, fn in (("antialiased always (before)", before), ("decode_and_resize (after)", after)):
            start, n = time.time(), 0
            while time.time() - start < 3:
                fn(encoded).numpy()
                n += len(files[:384])
            rows.append({"row": f"resize 32 -> 96 px: {name}", "img_s": round(n / (time.time() - start)),
                         "max_pixel_difference": diff})
            print(rows[-1], flush=True)


def main():
    rows = []
    head_rows(rows)
    frozen_rows(rows)
    resize_rows(rows)
    lines = ["| row | seconds | img/s |", "|---|---|---|"]
    lines += [f"| {r['row']} | {r.get('seconds', '')} | {r.get('img_s', '')} |" for r in rows]
    write_results(os.path.join(HERE, "results", "step_overheads"),
                  {"load_avg": os.getloadavg(), "rows": rows}, "\n".join(lines),
                  "Training step and trace overheads, and the resize",
                  f"load average at the end {os.getloadavg()}\n\n")


if __name__ == "__main__":
    main()
