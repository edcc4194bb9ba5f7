"""Pipeline definition, runners and the tfx-transfer CLI."""
from modules import keras_compat  # noqa: F401  (Keras 2 before TensorFlow loads)
