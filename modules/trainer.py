"""Trainer module: probe, fine-tune, or probe-then-fine-tune a pretrained backbone.

Entry point for TFX: ``run_fn='tfx_transfer.modules.trainer.run_fn'``.

The linear probe pays for the backbone once: pooled backbone features of
every example are computed in one pass, cached on disk (streamed, never the
whole set in memory) and the head trains on them for all epochs. The
exported model still takes raw images: it is backbone + trained head behind
the Transform graph.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from typing import Any, Dict, List, Optional, Tuple

from tfx_transfer.modules import keras_compat  # noqa: F401
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras

from tfx_transfer.modules import backbones, contract, probe_solver, progress_events, warmup
from tfx_transfer.modules.config import ModelConfig, ModuleConfig, TrainingConfig

log = logging.getLogger("tfx_transfer.trainer")
SHUFFLE_BUFFER = 10_000  # examples (encoded images, or pooled features: ~50 MB at 1280-d)
# A head step on cached features is a few microseconds of work and ~3 ms of
# Python per call: 64 steps per call took 10 epochs on 50,000 CIFAR-10 features
# from 11.1 s to 7.3 s (391 per call: the same), with identical losses.
HEAD_STEPS_PER_EXECUTION = 64


# --------------------------------------------------------------------------
# Distribution
def choose_strategy() -> tf.distribute.Strategy:
    """TPU when present, MultiWorkerMirrored when TF_CONFIG names several
    workers, Mirrored with several GPUs, else the default strategy."""
    if os.environ.get("TPU_NAME") or os.environ.get("TPU_WORKER_HOSTNAMES"):
        # GKE TPU node pools are TPU VMs (TPU_WORKER_HOSTNAMES, no TPU_NAME):
        # the chips are attached to this host, which TensorFlow calls "local".
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=os.environ.get("TPU_NAME") or "local")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    cluster = tf_config.get("cluster", {})
    if sum(len(cluster.get(k, [])) for k in ("chief", "worker")) > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief() -> bool:
    tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = tf_config.get("task", {})
    if not task:
        return True
    has_chief = "chief" in tf_config.get("cluster", {})
    return task.get("type") == "chief" or (not has_chief and task.get("type") == "worker"
                                           and task.get("index", 0) == 0)


# --------------------------------------------------------------------------
# Model
def build_model(cfg: ModelConfig, num_classes: int, weights: Optional[str]):
    """(model, backbone, head): model = head(pool(backbone(image)))."""
    entry = backbones.get(cfg.backbone)
    size = cfg.image_size
    backbone = entry.build(size, weights=weights)
    backbone.trainable = False
    image = keras.Input((size, size, 3), name=contract.IMAGE_KEY)
    # training=False keeps BatchNorm in inference mode even when the backbone
    # is unfrozen: its moving statistics were learned on ImageNet and a small
    # batch of new data would wreck them.
    features = backbone(image, training=False)
    pool = keras.layers.GlobalAveragePooling2D if cfg.pooling == "avg" \
        else keras.layers.GlobalMaxPooling2D
    pooled = pool(name="pool")(features)
    head = build_head(int(pooled.shape[-1]), num_classes, cfg)
    outputs = head(pooled)
    model = TransferModel(image, outputs, name=f"{entry.name}_transfer")
    return model, backbone, head


_unconverted = tf.autograph.experimental.do_not_convert


class GraphModel(keras.Model):
    """A keras.Model whose fit, evaluate and predict steps are traced without autograph.

    Autograph transpiles Keras' step code and every layer's `call` the first
    time a step function is traced: 11 of the 27 s that 10 epochs of a head on
    50,000 cached features took, with identical losses without it. Nothing in
    these steps branches on tensor values in Python (tests/test_trainer.py
    checks that the losses are the same both ways).
    """

    train_step = _unconverted(keras.Model.train_step)
    test_step = _unconverted(keras.Model.test_step)
    predict_step = _unconverted(keras.Model.predict_step)

    @_unconverted
    def call(self, inputs, training=None, mask=None):
        # Keras converts a subclass' call when the model is called on a Keras
        # tensor (the head inside the full model): 4 s of a 5 s model build.
        return super().call(inputs, training=training, mask=mask)


class TransferModel(GraphModel):
    """A keras.Model whose backbone may train at its own, lower, learning rate.

    With `backbone_optimizer` set (fine-tuning from a fresh head), the head's
    weights step with `optimizer` and the unfrozen backbone blocks with
    `backbone_optimizer`; otherwise it is a plain keras.Model.
    """

    backbone_optimizer = None
    backbone_refs = frozenset()

    @_unconverted
    def train_step(self, data):
        if self.backbone_optimizer is None:
            return super().train_step(data)
        x, y = data[0], data[1]
        with tf.GradientTape(persistent=True) as tape:
            pred = self(x, training=True)
            loss = self.compute_loss(x, y, pred)
        trainable = self.trainable_variables
        backbone = [v for v in trainable if v.ref() in self.backbone_refs]
        head = [v for v in trainable if v.ref() not in self.backbone_refs]
        self.optimizer.minimize(loss, head, tape=tape)
        if backbone:
            self.backbone_optimizer.minimize(loss, backbone, tape=tape)
        del tape
        return self.compute_metrics(x, y, pred, None)


def build_head(dim: int, num_classes: int, cfg: ModelConfig) -> keras.Model:
    x = inputs = keras.Input((dim,), name="features")
    x = keras.layers.Dropout(cfg.dropout, name="head_dropout")(x)
    if cfg.hidden_units:
        x = keras.layers.Dense(cfg.hidden_units, activation="relu", name="head_hidden")(x)
        x = keras.layers.Dropout(cfg.dropout, name="head_hidden_dropout")(x)
    # float32 output even under mixed precision: softmax in fp16 loses small probabilities.
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32",
                                 name=contract.PROBABILITIES)(x)
    return GraphModel(inputs, outputs, name="head")


def unfreeze_top_groups(backbone: keras.Model, entry: backbones.Backbone, n: int) -> List[str]:
    """Unfreezes the top n layer groups; BatchNorm layers stay frozen. Returns their names."""
    groups = entry.layer_groups(backbone)
    n = min(n, len(groups))
    backbone.trainable = True
    top = {id(l) for g in groups[len(groups) - n:] for l in g}
    for layer in backbone.layers:
        layer.trainable = id(layer) in top and not isinstance(layer, keras.layers.BatchNormalization)
    return [l.name for g in groups[len(groups) - n:] for l in g]


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self, base_lr, total_steps, warmup_steps=0, cosine=True):
        self.base_lr, self.total_steps = float(base_lr), max(1, int(total_steps))
        self.warmup_steps, self.cosine = int(warmup_steps), bool(cosine)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        lr = tf.constant(self.base_lr)
        if self.cosine:
            progress = tf.clip_by_value((step - self.warmup_steps) /
                                        max(1, self.total_steps - self.warmup_steps), 0.0, 1.0)
            lr = 0.5 * self.base_lr * (1.0 + tf.cos(math.pi * progress))
        if self.warmup_steps:
            lr = tf.where(step < self.warmup_steps,
                          self.base_lr * (step + 1) / self.warmup_steps, lr)
        return lr

    def get_config(self):
        return {"base_lr": self.base_lr, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "cosine": self.cosine}


def make_optimizer(cfg: TrainingConfig, lr: float, steps_per_epoch: int, epochs: int):
    schedule = WarmupCosine(lr, steps_per_epoch * epochs, int(cfg.warmup_epochs * steps_per_epoch),
                            cfg.cosine_decay)
    clip = {"clipnorm": cfg.clipnorm} if cfg.clipnorm else {}
    if cfg.optimizer == "sgd":
        opt = keras.optimizers.SGD(schedule, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay or None, **clip)
    elif cfg.optimizer == "adam":
        opt = keras.optimizers.Adam(schedule, **clip)
    else:
        opt = keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay, **clip)
    return opt


def compile_model(model, cfg: TrainingConfig, lr, steps_per_epoch, epochs,
                  steps_per_execution: int = 1):
    model.compile(
        optimizer=make_optimizer(cfg, lr, steps_per_epoch, epochs),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        steps_per_execution=steps_per_execution)


class PadAndRandomCrop(keras.layers.Layer):
    """Reflect-pad and crop back at a random offset, per image; identity at
    inference (keras' RandomCrop resizes at inference, which would change
    evaluation images)."""

    def __init__(self, pad: int, **kwargs):
        super().__init__(**kwargs)
        self.pad = pad

    def call(self, x, training=None):
        if not training:
            return x
        p = self.pad
        padded = tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], mode="REFLECT")
        shape = tf.shape(x)[1:]
        return tf.map_fn(lambda im: tf.image.random_crop(im, shape), padded)

    def get_config(self):
        return dict(super().get_config(), pad=self.pad)


def augmentation(cfg: TrainingConfig, size: int) -> Optional[keras.Sequential]:
    aug = cfg.augment
    if not aug:
        return None
    layers = []
    if "flip" in aug:
        layers.append(keras.layers.RandomFlip("horizontal"))
    if "crop" in aug:
        layers.append(PadAndRandomCrop(max(2, size // 8)))
    if "rotation" in aug:
        layers.append(keras.layers.RandomRotation(0.05))
    if "zoom" in aug:
        layers.append(keras.layers.RandomZoom(0.1))
    return keras.Sequential(layers, name="augment")


# --------------------------------------------------------------------------
# Data
def image_dataset(file_pattern, data_accessor, tf_transform_output, batch_size: int,
                  num_classes: int, shuffle: bool, seed: int) -> tf.data.Dataset:
    """Raw tf.Examples -> (preprocessed image, one-hot label), transformed on the fly."""
    from tfx_bsl.public import tfxio

    dataset = data_accessor.tf_dataset_factory(
        file_pattern,
        # The buffer holds encoded images (a few KB each), so a large one is
        # cheap and bounded: memory does not grow with the dataset.
        tfxio.TensorFlowDatasetOptions(batch_size=batch_size, num_epochs=1, shuffle=shuffle,
                                       shuffle_seed=seed, shuffle_buffer_size=SHUFFLE_BUFFER),
        tf_transform_output.raw_metadata.schema)
    tft_layer = tf_transform_output.transform_features_layer()

    def apply(raw):
        out = tft_layer({contract.IMAGE_KEY: raw[contract.IMAGE_KEY],
                         contract.LABEL_KEY: raw[contract.LABEL_KEY]})
        label = tf.one_hot(tf.reshape(out[contract.LABEL_ID_KEY], [-1]), num_classes)
        return out[contract.IMAGE_KEY], label

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    # Not converted by autograph: it would transpile the Transform layer's code
    # (seconds of every run's set-up) and there is no tensor control flow in it.
    return (dataset.map(tf.autograph.experimental.do_not_convert(apply),
                        num_parallel_calls=tf.data.AUTOTUNE)
            .with_options(options).prefetch(tf.data.AUTOTUNE))


def cached_features(images: tf.data.Dataset, extract, path: str,
                    phase: str) -> Tuple[tf.data.Dataset, int, float]:
    """Pooled backbone features, computed once and streamed to a cache file.

    `extract` is one tf.function for every split, so the backbone is traced once."""
    stale = tf.io.gfile.glob(path + "_*.lockfile")
    if stale:  # a killed run left a half-written cache; tf.data would refuse to touch it
        log.warning("removing the incomplete feature cache of a previous attempt: %s", path)
        for f in tf.io.gfile.glob(path + "*"):
            tf.io.gfile.remove(f)
    ds = images.map(lambda x, y: (extract(x), y)).cache(path)
    start, n, batches = time.time(), 0, 0
    progress_events.emit(f"features {phase}", 0)
    for _, y in ds:  # one full pass writes the cache; later epochs read it
        n += int(y.shape[0])
        batches += 1
        progress_events.emit(f"features {phase}", n)
    seconds = time.time() - start
    progress_events.emit(f"features {phase}", n, n, finished=True, seconds=seconds)
    log.info("%s: backbone features of %d examples in %.1fs (%.1f img/s), cached at %s",
             phase, n, seconds, n / max(seconds, 1e-9), path)
    # A known length lets Keras run several steps per call (steps_per_execution).
    return ds.apply(tf.data.experimental.assert_cardinality(batches)), n, seconds


class _EpochLog(keras.callbacks.Callback):
    def __init__(self, phase):
        super().__init__()
        self.phase, self.t0, self.epoch, self.steps = phase, time.time(), 0, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        # params["steps"] is None for a dataset of unknown length: then epoch 1 counts them.
        self.seen = batch + 1
        progress_events.emit(f"{self.phase} epoch {self.epoch + 1}/{self.params.get('epochs')}",
                             batch + 1, self.params.get("steps") or self.steps, "batch")

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self.steps = self.steps or self.params.get("steps") or getattr(self, "seen", None)
        progress_events.emit(f"{self.phase} epoch {epoch + 1}/{self.params.get('epochs')}",
                             self.steps or 0, self.steps, "batch", epoch_end=True,
                             **{k: float(v) for k, v in logs.items() if isinstance(v, float)})
        log.info("%s epoch %d: %s (%.0fs)", self.phase, epoch + 1,
                 ", ".join(f"{k}={v:.4f}" for k, v in logs.items() if isinstance(v, float)),
                 time.time() - self.t0)


def _callbacks(cfg: TrainingConfig, phase, backup_dir, log_dir):
    cbs = [_EpochLog(phase), keras.callbacks.BackupAndRestore(backup_dir)]
    if cfg.early_stopping_patience:
        cbs.append(keras.callbacks.EarlyStopping(
            monitor="val_accuracy", mode="max", patience=cfg.early_stopping_patience,
            restore_best_weights=True))
    if log_dir:
        cbs.append(keras.callbacks.TensorBoard(os.path.join(log_dir, phase), update_freq="epoch"))
    return cbs


def _steps(n, batch_size):
    return max(1, math.ceil(n / batch_size))


# --------------------------------------------------------------------------
def train(mc: ModuleConfig, train_images: tf.data.Dataset, eval_images: tf.data.Dataset,
          num_classes: int, work_dir: str, log_dir: Optional[str] = None,
          weights: Optional[str] = None, strategy=None, num_train: Optional[int] = None):
    """Trains per mc.training.mode; returns (model, report dict).

    Separated from run_fn so that tests and benchmarks drive it without TFX.
    """
    cfg = mc.training
    strategy = strategy or choose_strategy()
    if tf.config.list_logical_devices("GPU"):
        keras.mixed_precision.set_global_policy("mixed_float16")
    mode, bs = cfg.mode, cfg.batch_size
    entry = backbones.get(mc.model.backbone)
    start = time.time()
    with strategy.scope():
        model, backbone, head = build_model(mc.model, num_classes, weights)
    report: Dict[str, Any] = {"mode": mode, "backbone": entry.name,
                              "image_size": mc.model.image_size,
                              "num_classes": num_classes, "phases": [],
                              "build_model_s": round(time.time() - start, 2)}
    tf.io.gfile.makedirs(work_dir)  # gs:// on clusters
    aug = augmentation(cfg, mc.model.image_size)
    use_cache = cfg.cache_features and aug is None

    def fit(m, train_ds, eval_ds, epochs, lr, phase, n_train, backbone_lr=None,
            steps_per_execution=1):
        with strategy.scope():
            compile_model(m, cfg, lr, _steps(n_train, bs), epochs, steps_per_execution)
            if backbone_lr is not None:
                opt = make_optimizer(cfg, backbone_lr, _steps(n_train, bs), epochs)
                if keras.mixed_precision.global_policy().name == "mixed_float16":
                    opt = keras.mixed_precision.LossScaleOptimizer(opt)
                m.backbone_optimizer = opt
                m.backbone_refs = frozenset(v.ref() for v in backbone.trainable_variables)
        start = time.time()
        history = m.fit(train_ds, validation_data=eval_ds, epochs=epochs, verbose=2,
                        callbacks=_callbacks(cfg, phase, os.path.join(work_dir, f"backup_{phase}"),
                                             log_dir))
        seconds = time.time() - start
        epochs_run = len(history.history.get("loss", [])) or epochs
        entry_ = {"phase": phase, "epochs": epochs_run, "seconds": round(seconds, 2),
                  "images_per_s": round(n_train * epochs_run / max(seconds, 1e-9), 1),
                  "history": {k: [float(v) for v in vs] for k, vs in history.history.items()}}
        report["phases"].append(entry_)
        log.info("%s: %d epochs in %.1fs (%.1f img/s)", phase, epochs_run, seconds,
                 entry_["images_per_s"])

    if mode in ("linear_probe", "lp_ft"):
        if use_cache:
            with strategy.scope():
                feature_model = keras.Model(model.input, model.get_layer("pool").output)
            extract = tf.function(lambda x: feature_model(x, training=False), autograph=False)
            tr, n_tr, s_tr = cached_features(train_images, extract,
                                             os.path.join(work_dir, "features_train"), "train")
            ev, n_ev, s_ev = cached_features(eval_images, extract,
                                             os.path.join(work_dir, "features_eval"), "eval")
            report["phases"].append({"phase": "feature_extraction", "examples": n_tr + n_ev,
                                     "seconds": round(s_tr + s_ev, 2),
                                     "images_per_s": round((n_tr + n_ev) / max(s_tr + s_ev, 1e-9), 1)})
            num_train = n_tr
            if cfg.probe_solver == "lbfgs" and not mc.model.hidden_units:
                phase = probe_solver.solve_head(head, tr, ev, cfg)
                report["phases"].append(phase)
                report["probe_solver"] = {k: phase[k] for k in (
                    "solver", "seconds", "l2", "converged", "iterations", "grad_norm")}
            else:
                # Shuffle examples, not cached batches, so every epoch sees new batch
                # mixes. (Hidden units make the head non-convex: always this path.)
                tr = (tr.unbatch().shuffle(min(n_tr, SHUFFLE_BUFFER), seed=cfg.seed,
                                           reshuffle_each_iteration=True)
                      .batch(bs).apply(tf.data.experimental.assert_cardinality(_steps(n_tr, bs)))
                      .prefetch(tf.data.AUTOTUNE))
                fit(head, tr, ev, cfg.epochs, cfg.learning_rate, "probe", n_tr,
                    steps_per_execution=HEAD_STEPS_PER_EXECUTION)
        else:
            num_train = num_train or _count(train_images)
            tr = train_images if aug is None else train_images.map(
                lambda x, y: (aug(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
            fit(model, tr, eval_images, cfg.epochs, cfg.learning_rate, "probe", num_train)

    if mode in ("fine_tune", "lp_ft"):
        num_train = num_train or _count(train_images)
        with strategy.scope():
            unfrozen = unfreeze_top_groups(backbone, entry, cfg.unfreeze_groups)
        report["unfrozen_layers"] = len(unfrozen)
        tr = train_images if aug is None else train_images.map(
            lambda x, y: (aug(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
        if mode == "fine_tune":
            # A fresh head needs the head learning rate; the pretrained blocks
            # get the low one, or the head's large early gradients wreck them.
            fit(model, tr, eval_images, cfg.fine_tune_epochs, cfg.learning_rate,
                "fine_tune", num_train, backbone_lr=cfg.fine_tune_learning_rate)
        else:
            # lp_ft: the head is already trained; everything moves slowly together.
            fit(model, tr, eval_images, cfg.fine_tune_epochs, cfg.fine_tune_learning_rate,
                "fine_tune", num_train)

    report["train_examples"] = num_train
    report["params"] = int(model.count_params())
    report["trainable_params"] = int(sum(int(tf.size(w)) for w in model.trainable_weights))
    final = report["phases"][-1]["history"] if report["phases"] else {}
    if final.get("val_accuracy"):
        report["final_val_accuracy"] = final["val_accuracy"][-1]
    return model, report


def _count(ds):
    return sum(int(y.shape[0]) for _, y in ds)


# --------------------------------------------------------------------------
# Export
def export(model: keras.Model, tf_transform_output, path: str, class_names: List[str]):
    """SavedModel with serving_default (tf.Examples), serving_images (encoded
    bytes), transform_features (for TFMA) and embeddings (for the projector)."""
    model.tft_layer = tf_transform_output.transform_features_layer()
    names = tf.constant(class_names)
    # One network with both outputs, behind one tf.function: the five
    # signatures call it, so the backbone is traced once, not once each.
    head = model.get_layer("head")
    inner = keras.Model(head.input, head.get_layer(contract.PROBABILITIES).input)
    network = keras.Model(model.input, [model.output, inner(model.get_layer("pool").output)])
    raw_spec = tf_transform_output.raw_feature_spec()
    # Only the features a request must carry: serving examples have no label.
    image_spec = {contract.IMAGE_KEY: raw_spec[contract.IMAGE_KEY]}
    label_spec = {contract.LABEL_KEY: raw_spec[contract.LABEL_KEY]}
    image_shape = [-1] + list(raw_spec[contract.IMAGE_KEY].shape)

    # autograph=False here and in the signatures: converting the code of every
    # Keras and TFT layer to graph code took most of the export (56 s of 64 s
    # under load); none of that code branches on tensors in Python.
    @tf.function(autograph=False)
    def forward(pixels):
        probs, embedding = network(pixels, training=False)
        ids = tf.argmax(probs, axis=-1)
        # `classes` names every column of `probabilities` (the convention of TF's
        # canned estimators), so a client can name its top-k without the vocabulary file.
        classes = tf.tile(names[tf.newaxis, :], [tf.shape(probs)[0], 1])
        return {contract.PROBABILITIES: probs, contract.CLASS_IDS: ids,
                contract.CLASS_NAMES: tf.gather(names, ids), contract.CLASSES: classes,
                contract.EMBEDDING: embedding}

    def outputs(pixels, embedding=False):
        out = dict(forward(pixels))
        if not embedding:
            out.pop(contract.EMBEDDING)
        return out

    def pixels_from(encoded):
        encoded = tf.reshape(encoded, image_shape)
        return model.tft_layer({contract.IMAGE_KEY: encoded})[contract.IMAGE_KEY]

    def images_from(serialized):
        return pixels_from(tf.io.parse_example(serialized, image_spec)[contract.IMAGE_KEY])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=contract.EXAMPLES_INPUT)],
                 autograph=False)
    def serve_examples(examples):
        return outputs(images_from(examples))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=contract.IMAGES_INPUT)],
                 autograph=False)
    def serve_images(images):
        return outputs(pixels_from(images))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=contract.EXAMPLES_INPUT)],
                 autograph=False)
    def transform_features(examples):
        parsed = tf.io.parse_example(examples, label_spec)
        out = model.tft_layer({contract.LABEL_KEY: parsed[contract.LABEL_KEY]})
        return {contract.LABEL_ID_KEY: out[contract.LABEL_ID_KEY]}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=contract.EXAMPLES_INPUT)],
                 autograph=False)
    def embeddings(examples):
        return outputs(images_from(examples), embedding=True)

    # TF Serving's Classify API takes only this shape of signature (classifier.cc).
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=contract.CLASSIFY_INPUT)],
                 autograph=False)
    def classification(inputs):
        out = outputs(images_from(inputs))
        return {contract.CLASSIFY_CLASSES: out[contract.CLASSES],
                contract.CLASSIFY_SCORES: out[contract.PROBABILITIES]}

    signatures = {
        contract.SERVING_DEFAULT: serve_examples.get_concrete_function(),
        contract.SERVING_IMAGES: serve_images.get_concrete_function(),
        contract.TRANSFORM_FEATURES: transform_features.get_concrete_function(),
        contract.EMBEDDINGS: embeddings.get_concrete_function(),
        contract.CLASSIFICATION: classification.get_concrete_function(),
    }
    # save_traces=False: Keras would otherwise trace every layer's call again
    # (most of the export's time) for keras.models.load_model, which no consumer
    # uses: TFMA, the projector and the servers read the signatures.
    model.save(path, save_format="tf", signatures=signatures, save_traces=False)
    # TF Serving replays it while loading, so production's first requests are warm.
    warmup.write_for_classifier(path, class_names)


# --------------------------------------------------------------------------
def run_fn(fn_args):
    """TFX Trainer entry point."""
    logging.basicConfig(level=logging.INFO)
    entered = time.time()
    # First: MultiWorkerMirrored must configure collectives before any TF op runs.
    strategy = choose_strategy()
    mc = ModuleConfig.from_custom_config(fn_args.custom_config)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and \
            mc.training.cache_features:
        # The cache file sits in the work dir that all workers share (it also
        # holds the BackupAndRestore checkpoint every worker must read), so
        # workers would overwrite each other's cache: train on images instead.
        log.info("multi-worker training: feature cache off")
        mc = dataclasses.replace(mc, training=dataclasses.replace(mc.training, cache_features=False))
    tf.keras.utils.set_random_seed(mc.training.seed)
    weights = backbones.resolve_weights(mc.model.backbone, mc.model.image_size, mc.model.weights)
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    class_names = [v.decode() if isinstance(v, bytes) else v for v in
                   tf_transform_output.vocabulary_by_name(contract.LABEL_VOCAB)]
    num_classes = len(class_names)
    log.info("%d classes (vocabulary order): %s", num_classes, class_names)
    global_bs = mc.training.batch_size  # the global batch; fit splits it across replicas
    train_ds = image_dataset(fn_args.train_files, fn_args.data_accessor, tf_transform_output,
                             global_bs, num_classes, shuffle=True, seed=mc.training.seed)
    eval_ds = image_dataset(fn_args.eval_files, fn_args.data_accessor, tf_transform_output,
                            global_bs, num_classes, shuffle=False, seed=0)
    work_dir = os.path.join(fn_args.model_run_dir, "work")
    setup_s = time.time() - entered
    model, report = train(mc, train_ds, eval_ds, num_classes, work_dir,
                          log_dir=fn_args.model_run_dir, weights=weights, strategy=strategy)
    report["setup_s"] = round(setup_s, 2)  # strategy, transform graph, input pipelines
    report["class_names"] = class_names
    report["strategy"] = type(strategy).__name__
    report["replicas"] = strategy.num_replicas_in_sync
    if strategy is not tf.distribute.get_strategy():
        # Distributed variables would put collective ops into the serving graph
        # (and MultiWorkerMirrored cannot save signatures over them at all): the
        # chief exports a plain copy. Reading synced variables is a collective,
        # so every worker reads the weights.
        values = model.get_weights()
        if is_chief():
            model = build_model(mc.model, num_classes, None)[0]
            model.set_weights(values)
    if is_chief():
        out_dir = fn_args.serving_model_dir
        start = time.time()
        with progress_events.phase("exporting the model"):
            export(model, tf_transform_output, out_dir, class_names)
        report["export_s"] = round(time.time() - start, 2)
        model_root = os.path.dirname(fn_args.serving_model_dir.rstrip("/"))
        report["run_fn_s"] = round(time.time() - entered, 2)
        for name, payload in ((contract.TRAINING_REPORT_FILE, report),
                              (contract.MODULE_CONFIG_FILE, mc.to_custom_config())):
            with tf.io.gfile.GFile(os.path.join(model_root, name), "w") as f:
                f.write(json.dumps(payload, indent=1))
        if tf.io.gfile.exists(work_dir):  # feature cache and backups: done with them
            tf.io.gfile.rmtree(work_dir)
        log.info("trained %s (%s) -> %s", mc.model.backbone, mc.training.mode, out_dir)
    else:
        log.info("worker done; the chief writes the model")
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        # Wait for the chief's export: a worker that exits first looks like a
        # crashed task to the coordination service, which then fails the chief.
        strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)),
                        axis=None)
