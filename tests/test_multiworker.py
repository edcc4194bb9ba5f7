"""Real multi-worker training: the Trainer's run_fn under MultiWorkerMirroredStrategy
with two worker processes on localhost, the way TFJob workers run it
(python -m tfx_transfer.components.tfjob_worker, TF_CONFIG naming both workers).

The examples and transform graph come from create_pipeline itself, run up to
Transform on the bundled CIFAR-10 sample. Settings are deterministic where it
matters for comparing runs: the same seed, no dropout, no augmentation, and no
feature cache (run_fn turns it off under multi-worker training, so the
single-worker reference turns it off too and both train the same way).
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import MNV2_NO_TOP, REPO, SAMPLE

pytestmark = pytest.mark.slow

TRAIN = dict(backbone="MobileNetV2", image_size=32, mode="linear_probe", epochs=3,
             batch_size=32, dropout=0.0, cache_features=False, optimizer="adam",
             learning_rate=3e-3, cosine_decay=False, seed=7)
WORKER_TIMEOUT = 1200


def calibrated_random_weights(path):
    """A randomly initialised MobileNetV2 (no pretraining) whose BatchNorm
    statistics are measured on the sample's training images.

    With weights none every BatchNorm keeps mean 0 / variance 1 and, run in
    inference mode as the trainer runs the backbone, the pooled features
    shrink to ~1e-13: no head can learn from them and any two runs "agree"
    at chance. One forward pass in training mode with momentum 0 sets each
    layer's statistics to those of its actual inputs, which keeps the
    features at unit scale."""
    import glob

    import tensorflow as tf
    import tf_keras as keras

    from tfx_transfer.modules import backbones, transform

    keras.utils.set_random_seed(TRAIN["seed"])
    files = sorted(glob.glob(os.path.join(SAMPLE, "train", "*", "*")))
    images = transform.preprocess_images(
        tf.constant([open(f, "rb").read() for f in files]), "MobileNetV2", TRAIN["image_size"])
    backbone = backbones.get("MobileNetV2").build(TRAIN["image_size"], weights=None)
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    backbone(images, training=True)
    backbone.save_weights(path)
    return path


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory):
    """Trainer inputs and exec properties from a real run of create_pipeline up to Transform."""
    from google.protobuf import message
    from google.protobuf import json_format
    from ml_metadata.metadata_store import metadata_store
    from tfx import v1 as tfx
    from tfx.orchestration.pipeline import RunOptions
    from tfx.types import artifact_utils

    from tfx_transfer.pipeline.config import RunConfig
    from tfx_transfer.pipeline.pipeline import create_pipeline
    from tfx_transfer.pipeline.runners.local import DEFAULT_BEAM_ARGS

    out = tmp_path_factory.mktemp("mw_artefacts")
    # Real ImageNet features where ../shared has them, so that "the same eval
    # accuracy" is compared above chance; else calibrated random weights.
    if os.path.exists(MNV2_NO_TOP):
        # Pretrained pooled features are small (~0.1-1): a larger step for the head.
        weights, train = MNV2_NO_TOP, dict(TRAIN, learning_rate=3e-2)
    else:
        weights, train = calibrated_random_weights(
            str(out / "mobilenet_v2_random_calibrated.h5")), TRAIN
    config = RunConfig.from_dict(dict(data=SAMPLE, output=str(out), projector=False,
                                      weights=weights, **train))
    conn = tfx.orchestration.metadata.sqlite_metadata_connection_config(str(out / "mlmd.sqlite"))
    pipeline = create_pipeline(config, pipeline_root=str(out / "root"),
                               metadata_connection_config=conn,
                               beam_pipeline_args=DEFAULT_BEAM_ARGS)
    tfx.orchestration.LocalDagRunner().run(pipeline, run_options=RunOptions(to_nodes=["Transform"]))

    store = metadata_store.MetadataStore(conn)

    def latest(type_name):
        artifact_type = store.get_artifact_type(type_name)
        artifacts = store.get_artifacts_by_type(type_name)
        assert artifacts, f"the pipeline produced no {type_name}"
        return [artifact_utils.deserialize_artifact(artifact_type, artifacts[-1])]

    trainer = next(c for c in pipeline.components if c.id == "Trainer")
    # What the Trainer executor receives: protos as JSON, custom_config as JSON.
    exec_properties = {
        k: json_format.MessageToJson(v, sort_keys=True) if isinstance(v, message.Message) else v
        for k, v in trainer.exec_properties.items() if v is not None}
    return {"inputs": {"examples": latest("Examples"), "transform_graph": latest("TransformGraph"),
                       "schema": latest("Schema")},
            "exec_properties": exec_properties, "data": out}


def fn_args_file(artefacts, out_dir, **overrides):
    """The file tfx_transfer.components.tfjob_worker reads, for fresh Model/ModelRun outputs under out_dir."""
    from tfx.types import standard_artifacts

    from tfx_transfer.components import tfjob_worker as worker_main

    model, model_run = standard_artifacts.Model(), standard_artifacts.ModelRun()
    model.uri, model_run.uri = str(out_dir / "model"), str(out_dir / "model_run")
    exec_properties = dict(artefacts["exec_properties"])
    from tfx_transfer.modules.config import TrainingConfig

    cfg = json.loads(exec_properties["custom_config"])  # sectioned: model, training
    for key, value in overrides.items():
        cfg["training" if key in TrainingConfig.field_names() else "model"][key] = value
    exec_properties["custom_config"] = json.dumps(cfg)
    path = str(out_dir / "fn_args.json")
    worker_main.dump(artefacts["inputs"], {"model": [model], "model_run": [model_run]},
                     exec_properties, path)
    return path


STARTED = []


@pytest.fixture(autouse=True)
def _no_stray_workers():
    """A failed assertion must not leave training processes behind."""
    yield
    while STARTED:
        p = STARTED.pop()
        if p.poll() is None:
            p.kill()
            p.wait()


def start_worker(fn_args, log_path, tf_config=None):
    env = dict(os.environ, PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    if tf_config:
        env["TF_CONFIG"] = json.dumps(tf_config)
    with open(log_path, "a") as log:
        p = subprocess.Popen([sys.executable, "-m", "tfx_transfer.components.tfjob_worker", "--fn-args", fn_args],
                             cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    STARTED.append(p)
    return p


def cluster(n):
    import portpicker

    workers = [f"localhost:{portpicker.pick_unused_port()}" for _ in range(n)]
    return [{"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}
            for i in range(n)]


def wait_all(procs, timeout=WORKER_TIMEOUT):
    deadline = time.time() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    return [p.returncode for p in procs]


def epochs_logged(log_text):
    """[(epoch, loss)] of the probe phase, from the trainer's per-epoch log lines."""
    return [(int(m.group(1)), float(m.group(2))) for m in
            re.finditer(r"probe epoch (\d+): loss=([0-9.]+)", log_text)]


def eval_accuracy(model_dir, examples_artifact):
    """Accuracy of an exported model on the eval split, through its serving signature."""
    import tensorflow as tf
    from tfx.types import artifact_utils

    split = artifact_utils.get_split_uri([examples_artifact], "eval")
    records = tf.data.TFRecordDataset(tf.io.gfile.glob(os.path.join(split, "*")),
                                      compression_type="GZIP")
    serve = tf.saved_model.load(model_dir).signatures["serving_default"]
    predicted, labels = [], []
    for batch in records.batch(64):
        predicted += [n.decode() for n in serve(examples=batch)["class_names"].numpy()]
        for raw in batch.numpy():
            labels.append(tf.train.Example.FromString(raw).features.feature["label"]
                          .bytes_list.value[0].decode())
    return sum(p == t for p, t in zip(predicted, labels)) / len(labels), predicted


def read(path):
    with open(path) as f:
        return f.read()


def test_two_workers_train_the_same_model_as_one(artefacts, tmp_path):
    examples = artefacts["inputs"]["examples"][0]
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()

    single = fn_args_file(artefacts, tmp_path / "one")
    assert wait_all([start_worker(single, tmp_path / "one" / "log.txt")]) == [0]

    two = fn_args_file(artefacts, tmp_path / "two")
    logs = [tmp_path / "two" / f"worker{i}.txt" for i in range(2)]
    procs = [start_worker(two, log, tf_config) for log, tf_config in zip(logs, cluster(2))]
    assert wait_all(procs) == [0, 0], read(logs[0])[-3000:] + read(logs[1])[-3000:]

    one_report = json.loads(read(tmp_path / "one" / "model" / "training_report.json"))
    two_report = json.loads(read(tmp_path / "two" / "model" / "training_report.json"))
    assert one_report["replicas"] == 1
    assert two_report["replicas"] == 2
    assert two_report["strategy"] in ("MultiWorkerMirroredStrategy", "CollectiveAllReduceStrategy")

    # Both workers ran every epoch and saw the same all-reduced loss: each
    # one's step needs the other's gradients, so neither can train alone.
    one_epochs = epochs_logged(read(tmp_path / "one" / "log.txt"))
    w0, w1 = (epochs_logged(read(log)) for log in logs)
    assert [e for e, _ in w0] == [e for e, _ in w1] == list(range(1, TRAIN["epochs"] + 1))
    assert w0 == w1
    # Same global batch, same data order: the same optimisation, epoch by epoch.
    assert [e for e, _ in one_epochs] == [e for e, _ in w0]
    for (_, a), (_, b) in zip(one_epochs, w0):
        assert a == pytest.approx(b, rel=2e-3)
    # ...and it is a real one: the training loss falls every epoch.
    losses = [l for _, l in w0]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses

    # Only the chief writes the model.
    chief_log, worker_log = read(logs[0]), read(logs[1])
    serving = str(tmp_path / "two" / "model" / "Format-Serving")
    assert f"-> {serving}" in chief_log
    assert "the chief writes the model" in worker_log and "-> " + serving not in worker_log
    assert sorted(os.listdir(tmp_path / "two" / "model")) == sorted(
        os.listdir(tmp_path / "one" / "model"))
    assert not os.path.exists(tmp_path / "two" / "model_run" / "work")

    acc_one, pred_one = eval_accuracy(str(tmp_path / "one" / "model" / "Format-Serving"), examples)
    acc_two, pred_two = eval_accuracy(serving, examples)
    agreement = sum(a == b for a, b in zip(pred_one, pred_two)) / len(pred_one)
    print(f"\neval accuracy: one worker {acc_one:.3f}, two workers {acc_two:.3f}; "
          f"same prediction on {agreement:.1%} of {len(pred_one)} eval images; "
          f"train loss by epoch {[l for _, l in w0]}")
    assert abs(acc_one - acc_two) <= 0.01
    assert agreement >= 0.95
    if os.path.exists(MNV2_NO_TOP):
        # With pretrained features the model must have learnt something: not a
        # constant answer, and above the 10 % of chance.
        assert len(set(pred_one)) >= 3
        assert acc_one >= 0.14


def test_killed_worker_resumes_from_the_last_checkpoint(artefacts, tmp_path):
    """Kill worker 1 after the first epoch's checkpoint; restart whatever
    exits with an error, as the Training Operator does for a TFJob with
    restartPolicy OnFailure; training resumes from BackupAndRestore's
    checkpoint (model_run/work/backup_probe) and finishes."""
    epochs = 5
    fn_args = fn_args_file(artefacts, tmp_path, epochs=epochs)
    logs = [tmp_path / f"worker{i}.txt" for i in range(2)]
    tf_configs = cluster(2)
    procs = [start_worker(fn_args, log, c) for log, c in zip(logs, tf_configs)]
    checkpoint = tmp_path / "model_run" / "work" / "backup_probe" / "chief" / "checkpoint"
    deadline = time.time() + WORKER_TIMEOUT
    while not checkpoint.exists():
        assert all(p.poll() is None for p in procs), [read(log)[-2000:] for log in logs]
        assert time.time() < deadline
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGKILL)
    procs[1].wait()
    before = epochs_logged(read(logs[0]))
    assert 1 <= len(before) < epochs, "the kill came after training had finished"

    restarts = [0, 0]
    while any(p.poll() != 0 for p in procs):
        for i, p in enumerate(procs):
            if p.poll() not in (None, 0):
                assert restarts[i] < 3, read(logs[i])[-3000:]
                restarts[i] += 1
                with open(logs[i], "a") as f:
                    f.write("\n=== restarted ===\n")
                procs[i] = start_worker(fn_args, logs[i], tf_configs[i])
        assert time.time() < deadline, "workers did not finish after the restart"
        time.sleep(0.5)

    assert restarts[1] >= 1
    for log in logs:
        resumed = epochs_logged(read(log).split("=== restarted ===")[-1])
        # Resumed after the last checkpointed epoch, not from scratch, and finished.
        assert resumed[0][0] == before[-1][0] + 1 > 1
        assert resumed[-1][0] == epochs
    report = json.loads(read(tmp_path / "model" / "training_report.json"))
    assert report["replicas"] == 2
    assert report["phases"][-1]["epochs"] == epochs - before[-1][0]
    acc, _ = eval_accuracy(str(tmp_path / "model" / "Format-Serving"),
                           artefacts["inputs"]["examples"][0])
    print(f"\nkilled worker 1 after epoch {before[-1][0]}; restarts {restarts}; resumed at "
          f"epoch {before[-1][0] + 1} of {epochs}; eval accuracy {acc:.3f}")
