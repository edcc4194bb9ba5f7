"""Transform module: encoded image -> backbone-ready pixels, class name -> id.

The graph is applied on the fly (Trainer input pipeline, serving signatures,
TFMA) instead of being materialised: a float 224x224x3 image is 600 KB, the
JPEG it came from is a few KB.
"""
from __future__ import annotations

from typing import Dict

import tensorflow as tf
import tensorflow_transform as tft

from tfx_transfer.modules import backbones
from tfx_transfer.modules.config import ModuleConfig
from tfx_transfer.modules.contract import IMAGE_KEY, LABEL_ID_KEY, LABEL_KEY, LABEL_VOCAB


def decode_and_resize(encoded: tf.Tensor, size: int) -> tf.Tensor:
    """A batch of encoded JPEG/PNG/GIF/BMP bytes -> float32 [N, size, size, 3] in [0, 255]."""
    encoded = tf.reshape(encoded, [-1])

    def one(data):
        # channels=3: greyscale and RGBA images become RGB like everything else.
        image = tf.cast(tf.io.decode_image(data, channels=3, expand_animations=False), tf.float32)
        # Antialiasing filters before shrinking; enlarging with it gives the
        # same pixels (to 3e-5 of 255, 32 -> 96 px) at 1.5-2.6x the cost, and the
        # resize was most of the input pipeline's time on CIFAR-10.
        shrinking = tf.reduce_any(tf.shape(image)[:2] > size)
        image = tf.cond(
            shrinking,
            lambda: tf.image.resize(image, [size, size], method="bilinear", antialias=True),
            lambda: tf.image.resize(image, [size, size], method="bilinear", antialias=False))
        return tf.clip_by_value(image, 0.0, 255.0)

    return tf.map_fn(one, encoded, fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))


def preprocess_images(encoded: tf.Tensor, backbone: str, size: int) -> tf.Tensor:
    pixels = decode_and_resize(encoded, size)
    return backbones.get(backbone).preprocess_input(pixels)


def preprocessing_fn(inputs: Dict[str, tf.Tensor], custom_config=None) -> Dict[str, tf.Tensor]:
    model = ModuleConfig.from_custom_config(custom_config).model
    outputs = {IMAGE_KEY: preprocess_images(inputs[IMAGE_KEY], model.backbone, model.image_size)}
    # Ties in frequency are ordered reverse-alphabetically by tft; every id ->
    # name mapping therefore goes through this vocabulary file, never sorted().
    outputs[LABEL_ID_KEY] = tft.compute_and_apply_vocabulary(
        tf.reshape(inputs[LABEL_KEY], [-1]), vocab_filename=LABEL_VOCAB, num_oov_buckets=0,
        default_value=-1)
    return outputs
