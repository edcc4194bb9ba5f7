"""Transform and Trainer module code and the backbone registry."""
from tfx_transfer.modules import keras_compat  # noqa: F401  (Keras 2 before TensorFlow loads)
