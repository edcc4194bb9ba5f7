"""Pipeline definition, runners and the tfx-transfer CLI."""
from tfx_transfer.modules import keras_compat  # noqa: F401  (Keras 2 before TensorFlow loads)
