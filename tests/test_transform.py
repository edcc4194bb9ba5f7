import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfx_transfer.modules import backbones, transform
from tfx_transfer.modules.config import ModuleConfig


def _encode(arr, fmt):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("mode,fmt", [("RGB", "JPEG"), ("L", "PNG"), ("RGBA", "PNG"), ("RGB", "PNG")])
def test_decode_resize_any_channel_count(mode, fmt):
    arr = np.random.RandomState(0).randint(0, 255, (20, 30, 4), dtype=np.uint8)
    img = np.asarray(Image.fromarray(arr, "RGBA").convert(mode))
    out = transform.decode_and_resize(tf.constant([_encode(img, fmt)] * 2), 48).numpy()
    assert out.shape == (2, 48, 48, 3) and out.dtype == np.float32
    assert 0 <= out.min() and out.max() <= 255 and out.std() > 1


def test_resize_keeps_content():
    arr = np.zeros((32, 32, 3), np.uint8)
    arr[:, :16] = 255  # left half white
    out = transform.decode_and_resize(tf.constant([_encode(arr, "PNG")]), 96).numpy()[0]
    assert out[:, :40].mean() > 250 and out[:, 56:].mean() < 5


@pytest.mark.parametrize("name,lo,hi", [("MobileNetV2", -1, 1), ("ResNet50", -130, 155),
                                        ("EfficientNetB0", 0, 255), ("DenseNet121", -2.2, 2.7)])
def test_backbone_preprocessing_is_the_families_own(name, lo, hi):
    arr = np.random.RandomState(1).randint(0, 255, (8, 8, 3), dtype=np.uint8)
    out = transform.preprocess_images(tf.constant([_encode(arr, "PNG")]), name, 16).numpy()
    assert lo - 1e-3 <= out.min() and out.max() <= hi + 1e-3
    parsed = ModuleConfig.from_custom_config({"model": {"backbone": name}})
    assert parsed.model.image_size == backbones.get(name).default_size


def test_image_size_override():
    parsed = ModuleConfig.from_custom_config({"model": {"backbone": "MobileNetV2", "image_size": 96}})
    assert parsed.model.image_size == 96
