"""Custom TFX components."""
from modules import keras_compat  # noqa: F401  (Keras 2 before TensorFlow loads)
