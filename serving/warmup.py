"""The SavedModel's warmup file, in TF Serving's format.

TF Serving replays <export>/assets.extra/tf_serving_warmup_requests while it
loads a version (servables/tensorflow/saved_model_warmup.cc; format in
https://www.tensorflow.org/tfx/serving/saved_model_warmup): a TFRecord file of
serialized PredictionLog protos, at most 1000 of them. Without it the first
requests in production pay for graph initialisation. The export writes a few
requests per signature (modules/trainer.py `export`), and the local server
replays the same file (serving/server.py `load_version`).
"""
from __future__ import annotations

import os
from typing import Dict, Iterable, List, Sequence, Tuple

WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
# Batch sizes replayed per signature: the first request of a new batch size
# still pays for some kernel set-up, so a single and a small batch.
WARMUP_BATCH_SIZES = (1, 8)
WARMUP_IMAGE_SIZE = 224


def warmup_path(export_dir: str) -> str:
    return f"{export_dir.rstrip('/')}/{WARMUP_DIR}/{WARMUP_FILE}"


def _jpeg(size: int) -> bytes:
    """A gradient JPEG: a real photo's decode and resize path, without shipping a photo."""
    import tensorflow as tf

    ramp = tf.cast(tf.linspace(0.0, 255.0, size), tf.uint8)
    image = tf.stack([tf.tile(ramp[tf.newaxis, :], [size, 1]),
                      tf.tile(ramp[:, tf.newaxis], [1, size]),
                      tf.fill([size, size], tf.constant(128, tf.uint8))], axis=-1)
    return tf.io.encode_jpeg(image, quality=90).numpy()


def requests(model_name: str, signature_inputs: Dict[str, Tuple[str, List[bytes]]],
             batch_sizes: Sequence[int] = WARMUP_BATCH_SIZES) -> List[bytes]:
    """Serialized PredictionLogs: each signature's one string input filled with
    `batch` copies of its element, for every batch size."""
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    from serving.signatures import string_tensor

    logs = []
    for signature, (key, elements) in sorted(signature_inputs.items()):
        for batch in batch_sizes:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = signature
            values = [elements[i % len(elements)] for i in range(batch)]
            request.inputs[key].CopyFrom(string_tensor(values))
            logs.append(prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)).SerializeToString())
    return logs


def write(export_dir: str, logs: Iterable[bytes]) -> str:
    import tensorflow as tf

    path = warmup_path(export_dir)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        for record in logs:
            writer.write(record)
    return path


def write_for_classifier(export_dir: str, class_names: Sequence[str], model_name: str = "",
                         image_key: str = "image", label_key: str = "label") -> str:
    """The warmup file of the exported classifier: JPEG bytes for serving_images,
    tf.Examples of them for serving_default, classification and embeddings, a
    labelled tf.Example for transform_features."""
    from tensorflow.core.example import example_pb2, feature_pb2

    from serving import signatures as sigs

    def example(**features):
        return example_pb2.Example(features=feature_pb2.Features(feature={
            k: feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=[v]))
            for k, v in features.items()})).SerializeToString()

    jpeg = _jpeg(WARMUP_IMAGE_SIZE)
    image_example = example(**{image_key: jpeg})
    inputs = {
        sigs.SERVING_IMAGES: (sigs.IMAGES_INPUT, [jpeg]),
        sigs.SERVING_DEFAULT: (sigs.EXAMPLES_INPUT, [image_example]),
        sigs.EMBEDDINGS: (sigs.EXAMPLES_INPUT, [image_example]),
        sigs.CLASSIFICATION: (sigs.CLASSIFY_INPUT, [image_example]),
        sigs.TRANSFORM_FEATURES: (sigs.EXAMPLES_INPUT,
                                  [example(**{label_key: n.encode()}) for n in class_names[:1]]),
    }
    return write(export_dir, requests(model_name, {k: v for k, v in inputs.items() if v[1]}))


def read(export_dir: str) -> list:
    """The PredictionLogs of a version's warmup file; [] when it has none."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = warmup_path(export_dir)
    if not tf.io.gfile.exists(path):
        return []
    return [prediction_log_pb2.PredictionLog.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(path)]


def replayable(logs) -> Iterable[Tuple[str, Dict[str, object]]]:
    """(signature name, {input key: TensorProto}) of each Predict or Classify log."""
    from serving import signatures as sigs

    for log in logs:
        kind = log.WhichOneof("log_type")
        if kind == "predict_log":
            spec = log.predict_log.request.model_spec
            yield spec.signature_name, dict(log.predict_log.request.inputs)
        elif kind == "classify_log":
            request = log.classify_log.request
            name = request.model_spec.signature_name or sigs.SERVING_DEFAULT
            key = sigs.SIGNATURE_INPUTS.get(name, (sigs.EXAMPLES_INPUT,))[0]
            examples = [e.SerializeToString() for e in request.input.example_list.examples]
            yield name, {key: sigs.string_tensor(examples)}
        else:
            raise ValueError(f"warmup record of type {kind!r} is not supported by the local "
                             "server (Predict and Classify are)")
