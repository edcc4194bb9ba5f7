"""TFX 1.16 is built on Keras 2: make `tf.keras` resolve to tf_keras.

Must run before TensorFlow is first imported, so every package of this
project imports it from its __init__.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
