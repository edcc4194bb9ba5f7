"""The hand-written peer: tf.data decode + resize, Keras features, scikit-learn
logistic regression. The yardstick for the pipeline's linear probe, measured
on the same weights and data.

    python benchmarks/peer_probe.py --data CIFAR_DIR --weights FILE.h5 --image-size 96
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tfx_transfer.modules import keras_compat  # noqa: F401,E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402


def files_and_labels(split_dir, limit=None):
    classes = sorted(os.listdir(split_dir))
    files, labels = [], []
    for i, c in enumerate(classes):
        fs = sorted(glob.glob(os.path.join(split_dir, c, "*")))[:limit]
        files += fs
        labels += [i] * len(fs)
    return files, np.array(labels), classes


def features(files, size, model, batch=128):
    def load(path):
        img = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        img = tf.image.resize(tf.cast(img, tf.float32), [size, size])
        return keras.applications.mobilenet_v2.preprocess_input(img)

    ds = (tf.data.Dataset.from_tensor_slices(files).map(load, num_parallel_calls=tf.data.AUTOTUNE)
          .batch(batch).prefetch(tf.data.AUTOTUNE))
    return np.concatenate([model(x, training=False).numpy() for x in ds])


def run(data, weights, size, train_limit=None, cache=None):
    from sklearn.linear_model import LogisticRegression

    train_files, y_train, classes = files_and_labels(os.path.join(data, "train"), train_limit)
    test_files, y_test, _ = files_and_labels(os.path.join(data, "test"))
    t0 = time.time()
    if cache and os.path.exists(cache):
        z = np.load(cache)
        x_train, x_test = z["x_train"], z["x_test"]
        extract_s = float(z["extract_s"])
    else:
        model = keras.applications.MobileNetV2(include_top=False, weights=weights,
                                               input_shape=(size, size, 3), pooling="avg")
        x_train = features(train_files, size, model)
        x_test = features(test_files, size, model)
        extract_s = time.time() - t0
        if cache:
            np.savez(cache, x_train=x_train, x_test=x_test, y_train=y_train, y_test=y_test,
                     extract_s=extract_s)
    t1 = time.time()
    clf = LogisticRegression(max_iter=1000)
    clf.fit(x_train, y_train)
    fit_s = time.time() - t1
    acc = float((clf.predict(x_test) == y_test).mean())
    n = len(train_files) + len(test_files)
    return {"method": "peer: Keras features + sklearn LogisticRegression", "image_size": size,
            "train_examples": len(train_files), "test_examples": len(test_files),
            "accuracy": acc, "extract_s": round(extract_s, 1),
            "extract_img_s": round(n / max(extract_s, 1e-9), 1), "fit_s": round(fit_s, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--train-limit", type=int, help="images per class from train/")
    p.add_argument("--features-cache", help="npz to reuse extracted features")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "peer_probe.json"))
    args = p.parse_args()
    result = run(args.data, args.weights, args.image_size, args.train_limit, args.features_cache)
    print("| method | size | train | accuracy | extract img/s | fit s |\n|---|---|---|---|---|---|")
    print(f"| {result['method']} | {result['image_size']} | {result['train_examples']} | "
          f"{result['accuracy']:.4f} | {result['extract_img_s']} | {result['fit_s']} |")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
