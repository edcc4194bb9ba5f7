"""Custom TFX components."""
from tfx_transfer.modules import keras_compat  # noqa: F401  (Keras 2 before TensorFlow loads)
