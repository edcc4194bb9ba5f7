"""The contract between the pipeline, the module files, the exported model and its clients.

Every name that one part writes and another reads is spelled here once: the
features of the raw tf.Examples, the Transform's outputs and vocabulary, the
SavedModel's signatures with their input and output keys, and the side files
that travel next to artefacts. The exporter, the eval config, the projector,
the summary, the server and the client import these; renaming one here renames
it everywhere, instead of breaking a consumer at run time.

No TensorFlow import: the gRPC client and the CLI load this module too.
"""
from __future__ import annotations

# --- raw tf.Examples (ImageExampleGen, ImportExampleGen inputs, tfds export) ---
IMAGE_KEY = "image"  # encoded JPEG/PNG/GIF/BMP bytes
LABEL_KEY = "label"  # class name (bytes)
FILENAME_KEY = "filename"  # path relative to the data root
GROUP_KEY = "group"  # class group, present when the config has class_groups
HEIGHT_KEY, WIDTH_KEY = "height", "width"

# --- Transform outputs ---------------------------------------------------------
LABEL_ID_KEY = "label_id"  # int id of the class name
# Vocabulary of class names; line i names class id i. In the SavedModel it is
# the asset of the same name.
LABEL_VOCAB = "label"

# --- signatures of the exported SavedModel ------------------------------------
SERVING_DEFAULT = "serving_default"  # serialized tf.Examples with an `image` feature
SERVING_IMAGES = "serving_images"  # encoded image bytes
TRANSFORM_FEATURES = "transform_features"  # examples with `label` -> label_id (TFMA)
EMBEDDINGS = "embeddings"  # examples -> serving_default's outputs plus `embedding`
# For TF Serving's Classify API: classifier.cc takes only a signature of one
# input named `inputs` (serialized tf.Examples) to `classes` and/or `scores`.
CLASSIFICATION = "classification"
CLASSIFY_INPUT, CLASSIFY_CLASSES, CLASSIFY_SCORES = "inputs", "classes", "scores"
SIGNATURES = (SERVING_DEFAULT, SERVING_IMAGES, TRANSFORM_FEATURES, EMBEDDINGS, CLASSIFICATION)

EXAMPLES_INPUT = "examples"
IMAGES_INPUT = "images"

PROBABILITIES = "probabilities"  # [batch, C] float32
CLASS_IDS = "class_ids"  # [batch] int64, argmax of probabilities
CLASS_NAMES = "class_names"  # [batch] string, name of class_ids
CLASSES = "classes"  # [batch, C] string: the name of every probability column
EMBEDDING = "embedding"  # [batch, D] float32: the head's input

# --- the Trainer's custom_config ------------------------------------------------
# Beside the module config's "model" and "training": the settings of the TFJob
# executor, when the Trainer runs as a TFJob.
TFJOB_CONFIG_KEY = "tfjob"

# --- TF Serving's warmup file inside a SavedModel (saved_model_warmup.cc) ---------
WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"

# --- side files next to artefacts ----------------------------------------------
TRAINING_REPORT_FILE = "training_report.json"  # next to the Model's serving dir
MODULE_CONFIG_FILE = "transfer_config.json"  # the model/training config the Trainer used
SKIPPED_FILES_FILE = "skipped_files.json"  # in the Examples artefact: files left out, and why
IGNORED_FILES_FILE = "ignored_files.json"  # beside it: files left out by name as not images
SUMMARY_FILE = "summary.json"  # <output>/summary.json of a run

# --- the container image ---------------------------------------------------------
# A folder of Keras' ImageNet weight files outside HOME (the Dockerfile sets it;
# a TFJob worker's HOME is an emptyDir that hides the image's ~/.keras).
WEIGHTS_DIR_ENV = "TFX_TRANSFER_WEIGHTS_DIR"
