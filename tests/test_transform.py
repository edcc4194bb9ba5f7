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


def test_resize_antialiases_when_shrinking_and_enlarges_as_before():
    # Enlarging skips the antialiasing filter (the same pixels, for less);
    # shrinking keeps it, or a 500 px photo would alias at 96 px.
    rng = np.random.RandomState(0)
    small, big = (rng.randint(0, 255, s, dtype=np.uint8) for s in ((24, 32, 3), (300, 200, 3)))
    stripes = np.zeros((300, 300, 3), np.uint8)
    stripes[:, ::2] = 255  # 1-pixel stripes: aliasing turns them into a pattern, a filter into grey
    encoded = tf.constant([_encode(a, "PNG") for a in (small, big, stripes)])
    out = transform.decode_and_resize(encoded, 96).numpy()
    reference = [tf.clip_by_value(tf.image.resize(tf.constant(a, tf.float32), [96, 96],
                                                  antialias=True), 0, 255).numpy()
                 for a in (small, big, stripes)]
    np.testing.assert_allclose(out[0], reference[0], atol=1e-3)
    np.testing.assert_array_equal(out[1], reference[1])
    np.testing.assert_array_equal(out[2], reference[2])
    assert out[2].std() < 10  # filtered to grey, not aliased


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
