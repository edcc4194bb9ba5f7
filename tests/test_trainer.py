"""Each training switch, tested so that the test fails when the switch does nothing.

These drive tfx_transfer.modules.trainer.train() directly on small synthetic batches with a
real (randomly initialised) MobileNetV2 at 32 px; no TFX needed.
"""
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tfx_transfer.modules import backbones, trainer
from tfx_transfer.modules.config import ModuleConfig

N, SIZE, CLASSES = 64, 32, 4


def cfg(**kw):
    base = dict(backbone="MobileNetV2", image_size=SIZE, mode="linear_probe", pooling="avg",
                dropout=0.0, hidden_units=0, epochs=2, fine_tune_epochs=2, batch_size=16,
                learning_rate=1e-2, fine_tune_learning_rate=1e-2, unfreeze_groups=2,
                optimizer="adam", weight_decay=0.0, momentum=0.9, label_smoothing=0.0,
                warmup_epochs=0.0, cosine_decay=False, clipnorm=None, augment=[],
                early_stopping_patience=0, cache_features=True, seed=1,
                probe_solver="sgd")  # the epoch path; tests/test_probe_solver.py: L-BFGS
    base.update(kw)
    return ModuleConfig.from_fields(**base)


def data(counter=None, n=N):
    rng = np.random.RandomState(0)
    y = np.arange(n) % CLASSES
    # class-dependent brightness so that there is something to learn
    x = rng.uniform(-1, 1, (n, SIZE, SIZE, 3)).astype("float32") * 0.3 + (y[:, None, None, None] - 1.5) / 2
    ds = tf.data.Dataset.from_tensor_slices((x, tf.one_hot(y, CLASSES)))
    if counter is not None:
        def count(img, label):
            counter.assign_add(1)
            return img, label
        ds = ds.map(count)
    return ds.batch(16)


def weights_of(layers):
    return [w.numpy().copy() for l in layers for w in l.weights]


def same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1)


def capture_build(monkeypatch):
    """Records the model, backbone and head that train() builds, and their initial weights."""
    seen = {}
    real = trainer.build_model

    def build(c, n, w):
        model, backbone, head = real(c, n, w)
        seen.update(model=model, backbone=backbone, head=head,
                    backbone_init=weights_of(backbone.layers), head_init=weights_of(head.layers))
        return model, backbone, head

    monkeypatch.setattr(trainer, "build_model", build)
    return seen


@pytest.mark.parametrize("cache", [True, False])
def test_linear_probe_keeps_backbone_frozen_and_trains_head(tmp_path, monkeypatch, cache):
    seen = capture_build(monkeypatch)
    model, report = trainer.train(cfg(cache_features=cache), data(), data(), CLASSES, str(tmp_path))
    assert same(weights_of(seen["backbone"].layers), seen["backbone_init"])
    assert not same(weights_of(seen["head"].layers), seen["head_init"])
    assert report["trainable_params"] == 1280 * CLASSES + CLASSES


def test_cached_probe_runs_the_backbone_once(tmp_path):
    cached, frozen = tf.Variable(0, dtype=tf.int64), tf.Variable(0, dtype=tf.int64)
    trainer.train(cfg(epochs=3, cache_features=True), data(cached), data(), CLASSES, str(tmp_path / "c"))
    trainer.train(cfg(epochs=3, cache_features=False), data(frozen), data(), CLASSES, str(tmp_path / "f"))
    assert int(cached.numpy()) == N  # one pass over the images, then the cache
    assert int(frozen.numpy()) >= 3 * N  # every epoch decodes and runs the backbone again


def test_fine_tune_changes_only_the_top_groups_and_keeps_bn_statistics(tmp_path, monkeypatch):
    seen = capture_build(monkeypatch)
    trainer.train(cfg(mode="fine_tune", unfreeze_groups=2), data(), data(), CLASSES, str(tmp_path))
    backbone = seen["backbone"]
    groups = backbones.get("MobileNetV2").layer_groups(backbone)
    top = {id(l) for g in groups[-2:] for l in g}
    init = iter(seen["backbone_init"])
    changed_top, changed_bottom = 0, 0
    for layer in backbone.layers:
        for w in layer.weights:
            before = next(init)
            changed = not np.array_equal(before, w.numpy())
            if isinstance(layer, keras.layers.BatchNormalization):
                assert not changed, f"BatchNorm {w.name} moved while fine-tuning"
            elif id(layer) in top:
                changed_top += changed
            else:
                changed_bottom += changed
    assert changed_top > 0 and changed_bottom == 0


def test_unfreeze_never_cuts_a_group(tmp_path):
    model, backbone, _ = trainer.build_model(cfg().model, CLASSES, None)
    entry = backbones.get("MobileNetV2")
    for n in (1, 3, 5):
        names = set(trainer.unfreeze_top_groups(backbone, entry, n))
        for group in entry.layer_groups(backbone):
            in_top = {l.name in names for l in group}
            assert len(in_top) == 1, "a layer group is either wholly unfrozen or wholly frozen"
        trainable_layers = {l.name for l in backbone.layers if l.trainable_weights}
        assert trainable_layers <= names
        assert not any(isinstance(l, keras.layers.BatchNormalization) and l.trainable_weights
                       for l in backbone.layers)


def test_lp_ft_fine_tunes_from_the_probed_head(tmp_path, monkeypatch):
    seen = capture_build(monkeypatch)
    at_unfreeze = {}
    real = trainer.unfreeze_top_groups

    def spy(backbone, entry, n):
        at_unfreeze["head"] = weights_of(seen["head"].layers)
        return real(backbone, entry, n)

    monkeypatch.setattr(trainer, "unfreeze_top_groups", spy)
    _, report = trainer.train(cfg(mode="lp_ft"), data(), data(), CLASSES, str(tmp_path))
    assert [p["phase"] for p in report["phases"]] == ["feature_extraction", "probe", "fine_tune"]
    assert not same(at_unfreeze["head"], seen["head_init"]), "fine-tuning must start from the probed head"
    assert not same(weights_of(seen["head"].layers), at_unfreeze["head"])


class _Kill(keras.callbacks.Callback):
    def __init__(self, at_epoch):
        super().__init__()
        self.at = at_epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.at:
            raise KeyboardInterrupt("simulated kill")


def test_a_killed_run_resumes_from_its_last_epoch(tmp_path, monkeypatch):
    real = trainer._callbacks
    monkeypatch.setattr(trainer, "_callbacks", lambda *a: real(*a) + [_Kill(2)])
    with pytest.raises(KeyboardInterrupt):
        trainer.train(cfg(epochs=5, cache_features=False), data(), data(), CLASSES, str(tmp_path))
    assert os.listdir(tmp_path / "backup_probe")
    monkeypatch.setattr(trainer, "_callbacks", real)
    _, report = trainer.train(cfg(epochs=5, cache_features=False), data(), data(), CLASSES, str(tmp_path))
    probe = [p for p in report["phases"] if p["phase"] == "probe"][0]
    assert probe["epochs"] == 3, "epochs 1-2 were restored from the backup, 3-5 remain"


def test_a_killed_feature_extraction_leaves_no_stale_cache(tmp_path):
    # A cache lockfile left by a killed Trainer makes tf.data refuse to write;
    # the next attempt must start the cache over.
    path = tmp_path / "features_train"
    (tmp_path / "features_train_0.lockfile").write_text("x")
    feature_model, _, _ = trainer.build_model(cfg().model, CLASSES, None)
    feature_model = keras.Model(feature_model.input, feature_model.get_layer("pool").output)
    extract = tf.function(lambda x: feature_model(x, training=False))
    _, n, _ = trainer.cached_features(data(), extract, str(path), "train")
    assert n == N


def test_head_steps_without_autograph_and_many_per_call_train_the_same():
    # GraphModel traces its steps without autograph and the cached probe runs
    # HEAD_STEPS_PER_EXECUTION steps per call: neither may change the arithmetic.
    rng = np.random.RandomState(0)
    x = np.maximum(rng.randn(300, 16), 0).astype("float32")
    y = tf.one_hot(rng.randint(0, CLASSES, 300), CLASSES)
    steps = trainer._steps(300, 32)
    c = cfg(optimizer="sgd").training
    histories = []
    for cls, per_call in [(keras.Model, 1), (trainer.GraphModel, 1),
                          (trainer.GraphModel, trainer.HEAD_STEPS_PER_EXECUTION)]:
        keras.utils.set_random_seed(1)
        ds = (tf.data.Dataset.from_tensor_slices((x, y)).shuffle(300, seed=1).batch(32)
              .apply(tf.data.experimental.assert_cardinality(steps)))
        head = trainer.build_head(16, CLASSES, cfg(dropout=0.0).model)
        assert isinstance(head, trainer.GraphModel)
        model = cls(head.input, head.output)
        trainer.compile_model(model, c, 0.05, steps, 3, steps_per_execution=per_call)
        h = model.fit(ds, validation_data=ds, epochs=3, verbose=0).history
        histories.append(h)
    assert histories[0]["loss"][0] > histories[0]["loss"][-1]
    for h in histories[1:]:
        for key in ("loss", "accuracy", "val_loss"):
            np.testing.assert_allclose(h[key], histories[0][key], rtol=1e-6)


def test_early_stopping_stops(tmp_path):
    _, report = trainer.train(cfg(epochs=30, early_stopping_patience=1, learning_rate=1e-9,
                                  cache_features=True), data(), data(), CLASSES, str(tmp_path))
    probe = [p for p in report["phases"] if p["phase"] == "probe"][0]
    assert probe["epochs"] < 30


def test_optimizer_switches():
    c = cfg(optimizer="sgd", momentum=0.8, weight_decay=1e-3, clipnorm=1.0).training
    opt = trainer.make_optimizer(c, 0.1, 10, 2)
    assert isinstance(opt, keras.optimizers.SGD) and opt.momentum == 0.8
    assert opt.weight_decay == 1e-3 and opt.clipnorm == 1.0
    opt = trainer.make_optimizer(cfg(optimizer="adamw", weight_decay=0.05).training, 0.1, 10, 2)
    assert isinstance(opt, keras.optimizers.AdamW) and opt.weight_decay == 0.05


def test_warmup_then_cosine_schedule():
    s = trainer.WarmupCosine(1.0, total_steps=100, warmup_steps=10, cosine=True)
    lr = [float(s(i)) for i in (0, 5, 9, 10, 55, 99)]
    assert lr[0] < lr[1] < lr[2] <= 1.0
    assert lr[3] == pytest.approx(1.0, abs=1e-3)
    assert lr[4] == pytest.approx(0.5, abs=0.03)
    assert lr[5] < 0.01
    flat = trainer.WarmupCosine(1.0, total_steps=100, warmup_steps=0, cosine=False)
    assert float(flat(0)) == float(flat(99)) == 1.0


def test_label_smoothing_changes_the_loss():
    model = keras.Sequential([keras.layers.Dense(CLASSES, activation="softmax")])
    x, y = np.ones((4, 3), "float32"), tf.one_hot([0, 0, 0, 1], CLASSES)
    losses = []
    for ls in (0.0, 0.2):
        trainer.compile_model(model, cfg(label_smoothing=ls).training, 0.1, 1, 1)
        losses.append(model.evaluate(x, y, verbose=0)[0])
    assert losses[0] != pytest.approx(losses[1])


def test_augmentation_changes_training_images_only():
    aug = trainer.augmentation(cfg(augment=["flip", "crop", "rotation", "zoom"]).training, SIZE)
    x = np.random.RandomState(0).uniform(size=(4, SIZE, SIZE, 3)).astype("float32")
    assert aug(x, training=True).shape == x.shape
    assert not np.allclose(aug(x, training=True).numpy(), x)
    np.testing.assert_allclose(aug(x, training=False).numpy(), x, atol=1e-6)
    assert trainer.augmentation(cfg(augment=[]).training, SIZE) is None


def test_dropout_and_hidden_head():
    head = trainer.build_head(16, CLASSES, cfg(dropout=0.5, hidden_units=8).model)
    names = [l.name for l in head.layers]
    assert "head_hidden" in names and "head_dropout" in names
    x = np.ones((2, 16), "float32")
    assert not np.allclose(head(x, training=True).numpy(), head(x, training=True).numpy())
    np.testing.assert_allclose(head(x, training=False).numpy(), head(x, training=False).numpy())
    assert head.get_layer("head_dropout").rate == 0.5


def test_strategy_from_environment(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert trainer.is_chief()
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}')
    assert not trainer.is_chief()
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}')
    assert trainer.is_chief()


def test_fine_tune_gives_the_backbone_a_lower_learning_rate(tmp_path, monkeypatch):
    seen = capture_build(monkeypatch)
    trainer.train(cfg(mode="fine_tune", learning_rate=1e-2, fine_tune_learning_rate=1e-5, epochs=1,
                      fine_tune_epochs=1), data(), data(), CLASSES, str(tmp_path))
    model = seen["model"]
    assert model.backbone_optimizer is not None
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-2)  # cosine off: constant
    assert float(model.backbone_optimizer.learning_rate) == pytest.approx(1e-5)
    assert model.backbone_optimizer.iterations.numpy() > 0
    assert {v.ref() for v in seen["backbone"].trainable_variables} == set(model.backbone_refs)
