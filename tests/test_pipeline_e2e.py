"""The real pipeline, end to end, on the bundled sample (weights=None, 32 px)."""
import glob
import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf

pytestmark = pytest.mark.e2e


def test_summary_contract(tiny_run):
    config, summary = tiny_run
    on_disk = json.load(open(os.path.join(config.deploy.output, "summary.json")))
    assert on_disk["backbone"] == "MobileNetV2" and on_disk["mode"] == "linear_probe"
    assert on_disk["image_size"] == 32
    assert sorted(on_disk["classes"]) == sorted(os.listdir(os.path.join(config.data.data, "train")))
    assert (on_disk["train_examples"], on_disk["eval_examples"]) == (300, 100)
    assert on_disk["skipped_files"] == []
    m = on_disk["metrics"]
    assert 0 <= m["accuracy"] <= 1 and m["top5_accuracy"] >= m["accuracy"]
    assert set(m["per_class"]) == set(on_disk["classes"])
    # per-class recall from the confusion matrix equals TFMA's accuracy on the label slice
    for name, v in m["per_class"].items():
        assert set(v) >= {"precision", "recall", "f1"}
        assert v["recall"] == pytest.approx(m["slices"][f"label={name}"]["sparse_categorical_accuracy"], abs=1e-6)
    # the class -> group map adds a feature that TFMA slices on
    assert m["slices"]["group=vehicle"]["example_count"] == 40
    assert m["slices"]["group=animal"]["example_count"] == 60
    assert on_disk["blessed"] is True
    assert on_disk["pushed_model_dir"] and os.path.isdir(on_disk["pushed_model_dir"])
    for component in ("ImageExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator",
                      "Transform", "Trainer", "Evaluator", "Pusher"):
        assert component in on_disk["timings_s"]
    assert os.path.exists(os.path.join(config.deploy.output, "confusion_matrix.png"))


def test_pushed_model_has_tf_serving_layout_and_signatures(tiny_run):
    config, summary = tiny_run
    base = os.path.join(config.deploy.resolved_serving_dir, config.deploy.model_name)
    versions = [d for d in os.listdir(base) if d.isdigit()]
    assert len(versions) == 1
    path = os.path.join(base, versions[0])
    assert os.path.exists(os.path.join(path, "saved_model.pb"))
    model = tf.saved_model.load(path)
    assert {"serving_default", "serving_images", "transform_features", "embeddings"} <= \
        set(model.signatures)

    files = sorted(glob.glob(os.path.join(config.data.data, "test", "*", "*.jpg")))[:6]
    images = [open(f, "rb").read() for f in files]
    by_images = model.signatures["serving_images"](images=tf.constant(images))
    examples = [tf.train.Example(features=tf.train.Features(feature={
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b]))})).SerializeToString()
        for b in images]
    by_examples = model.signatures["serving_default"](examples=tf.constant(examples))
    probs = by_images["probabilities"].numpy()
    assert probs.shape == (6, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs, by_examples["probabilities"].numpy(), atol=1e-6)
    ids = by_images["class_ids"].numpy()
    assert (ids == probs.argmax(axis=1)).all()
    # class names come from the Transform vocabulary, in its (frequency, then
    # reverse-alphabetical) order, never from sorted() class folders
    vocab = summary["classes"]
    assert [n.decode() for n in by_images["class_names"].numpy()] == [vocab[i] for i in ids]
    # The signatures share one traced network: all agree on the same images.
    embedded = model.signatures["embeddings"](examples=tf.constant(examples))
    np.testing.assert_allclose(embedded["probabilities"].numpy(), probs, atol=1e-6)
    assert embedded["embedding"].shape[0] == 6 and embedded["embedding"].shape[1] > 0
    classified = model.signatures["classification"](inputs=tf.constant(examples))
    np.testing.assert_allclose(classified["scores"].numpy(), probs, atol=1e-6)
    assert set(by_images) == {"probabilities", "class_ids", "class_names", "classes"}


def test_tfma_label_mapping_uses_the_vocabulary(tiny_run):
    config, summary = tiny_run
    path = summary["pushed_model_dir"]
    model = tf.saved_model.load(path)
    labels = summary["classes"]
    examples = [tf.train.Example(features=tf.train.Features(feature={
        "label": tf.train.Feature(bytes_list=tf.train.BytesList(value=[l.encode()]))}))
        .SerializeToString() for l in labels]
    ids = model.signatures["transform_features"](examples=tf.constant(examples))["label_id"]
    assert list(np.reshape(ids.numpy(), [-1])) == list(range(len(labels)))


def test_blessing_gates_the_pusher(tmp_path):
    """A value threshold the model cannot meet: not blessed, nothing pushed."""
    from conftest import tiny_config
    from tfx_transfer.pipeline.runners import local as runners

    config = tiny_config(tmp_path, min_accuracy=0.99, epochs=1, projector=False)
    summary = runners.run(config)
    assert summary["blessed"] is False and summary["pushed_model_dir"] is None
    assert summary["metrics"]["accuracy"] < 0.99
    assert summary["component_states"]["Pusher"] == "COMPLETE"
    assert not os.path.exists(os.path.join(config.deploy.resolved_serving_dir, config.deploy.model_name)) or \
        not os.listdir(os.path.join(config.deploy.resolved_serving_dir, config.deploy.model_name))
