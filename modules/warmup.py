"""The SavedModel's warmup file, in TF Serving's format (written at export).

TF Serving replays <export>/assets.extra/tf_serving_warmup_requests while it
loads a version (servables/tensorflow/saved_model_warmup.cc; format in
https://www.tensorflow.org/tfx/serving/saved_model_warmup): a TFRecord file of
serialized PredictionLog protos, at most 1000 of them. Without it the first
requests in production pay for graph initialisation. The export writes a few
requests per signature (modules/trainer.py `export`); the local server replays
the same file (serving/warmup.py reads it).
"""
from __future__ import annotations

import os
from typing import Dict, Iterable, List, Sequence, Tuple

from tfx_transfer.modules import contract

# Batch sizes replayed per signature: the first request of a new batch size
# still pays for some kernel set-up, so a single and a small batch.
WARMUP_BATCH_SIZES = (1, 8)
WARMUP_IMAGE_SIZE = 224


def warmup_path(export_dir: str) -> str:
    return f"{export_dir.rstrip('/')}/{contract.WARMUP_DIR}/{contract.WARMUP_FILE}"


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
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    logs = []
    for signature, (key, elements) in sorted(signature_inputs.items()):
        for batch in batch_sizes:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = signature
            values = [elements[i % len(elements)] for i in range(batch)]
            request.inputs[key].CopyFrom(tf.make_tensor_proto(values, dtype=tf.string))
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


def write_for_classifier(export_dir: str, class_names: Sequence[str], model_name: str = "") -> str:
    """The warmup file of the exported classifier: JPEG bytes for serving_images,
    tf.Examples of them for serving_default, classification and embeddings, a
    labelled tf.Example for transform_features."""
    from tensorflow.core.example import example_pb2, feature_pb2

    def example(**features):
        return example_pb2.Example(features=feature_pb2.Features(feature={
            k: feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=[v]))
            for k, v in features.items()})).SerializeToString()

    jpeg = _jpeg(WARMUP_IMAGE_SIZE)
    image_example = example(**{contract.IMAGE_KEY: jpeg})
    inputs = {
        contract.SERVING_IMAGES: (contract.IMAGES_INPUT, [jpeg]),
        contract.SERVING_DEFAULT: (contract.EXAMPLES_INPUT, [image_example]),
        contract.EMBEDDINGS: (contract.EXAMPLES_INPUT, [image_example]),
        contract.CLASSIFICATION: (contract.CLASSIFY_INPUT, [image_example]),
        contract.TRANSFORM_FEATURES: (contract.EXAMPLES_INPUT,
                                      [example(**{contract.LABEL_KEY: n.encode()})
                                       for n in class_names[:1]]),
    }
    return write(export_dir, requests(model_name, {k: v for k, v in inputs.items() if v[1]}))
