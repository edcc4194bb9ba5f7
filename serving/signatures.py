"""How to wrap and check requests for the exported classifier's signatures.

The names come from modules/contract.py (the exporter in modules/trainer.py
uses the same ones); client and server both lean on this module: the client to know how to wrap an image for a
signature, the server to check requests before they reach the graph (so a bad
request gets a message about the request, not a TensorFlow stack).
"""
from __future__ import annotations

import io
from typing import Optional, Tuple

from tfx_transfer.modules.contract import (CLASS_IDS, CLASS_NAMES, CLASSES, CLASSIFICATION,  # noqa: F401
                              CLASSIFY_CLASSES, CLASSIFY_INPUT, CLASSIFY_SCORES, EMBEDDINGS,
                              EXAMPLES_INPUT, IMAGE_KEY as IMAGE_FEATURE, IMAGES_INPUT,
                              LABEL_VOCAB as LABELS_ASSET, PROBABILITIES, SERVING_DEFAULT,
                              SERVING_IMAGES, TRANSFORM_FEATURES)

# Input kinds: what one element of a signature's string input holds.
IMAGES, EXAMPLES = "images", "examples"
INPUT_KINDS = {IMAGES_INPUT: IMAGES, EXAMPLES_INPUT: EXAMPLES, CLASSIFY_INPUT: EXAMPLES}
SIGNATURE_INPUTS = {
    SERVING_DEFAULT: (EXAMPLES_INPUT, EXAMPLES),
    SERVING_IMAGES: (IMAGES_INPUT, IMAGES),
    EMBEDDINGS: (EXAMPLES_INPUT, EXAMPLES),
    CLASSIFICATION: (CLASSIFY_INPUT, EXAMPLES),
}

# What tf.io.decode_image reads. PIL calls multi-picture JPEGs (phone cameras) MPO.
DECODABLE_FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "GIF": "GIF", "BMP": "BMP"}


class BadImage(ValueError):
    pass


class ImageTooLarge(ValueError):
    pass


def check_image(data: bytes, max_pixels: Optional[int] = None) -> Tuple[str, int, int]:
    """(format, width, height) of encoded image bytes, read from the header only.

    Raises BadImage for bytes the model cannot decode and ImageTooLarge for a
    small file that would decode into a huge array (a decompression bomb).
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, (w, h) = im.format, im.size
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(str(e)) from None
    except Exception:
        head = bytes(data[:8])
        raise BadImage(f"not a JPEG, PNG, GIF or BMP image ({len(data)} bytes, starting {head!r})") \
            from None
    if fmt not in DECODABLE_FORMATS:
        raise BadImage(f"{fmt} images are not supported; send JPEG, PNG, GIF or BMP")
    if max_pixels and w * h > max_pixels:
        raise ImageTooLarge(f"{w}x{h} pixels is over the limit of {max_pixels} pixels")
    return DECODABLE_FORMATS[fmt], w, h


def image_of_example(serialized: bytes) -> bytes:
    """The encoded image held by a serialized tf.Example; ValueError says what is missing."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.example import example_pb2

    try:
        example = example_pb2.Example.FromString(serialized)
    except DecodeError:
        raise ValueError("not a serialized tf.Example") from None
    feature = example.features.feature.get(IMAGE_FEATURE)
    if feature is None:
        raise ValueError(f"tf.Example has no '{IMAGE_FEATURE}' feature "
                         f"(features: {sorted(example.features.feature) or 'none'})")
    values = feature.bytes_list.value
    if feature.WhichOneof("kind") != "bytes_list" or len(values) != 1:
        raise ValueError(f"feature '{IMAGE_FEATURE}' must hold exactly one bytes value "
                         "(the encoded image)")
    return values[0]


def string_tensor(values) -> "tensor_pb2.TensorProto":
    """A DT_STRING [N] TensorProto, built directly (tf.make_tensor_proto is slower)."""
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING, string_val=list(values),
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(values))]))


def image_example(encoded: bytes) -> bytes:
    """Encoded image bytes -> serialized tf.Example for the examples signatures."""
    from tensorflow.core.example import example_pb2, feature_pb2

    feature = feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=[encoded]))
    return example_pb2.Example(
        features=feature_pb2.Features(feature={IMAGE_FEATURE: feature})).SerializeToString()
