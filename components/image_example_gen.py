"""ImageExampleGen: a folder of labelled images -> tf.Examples.

Layout: ``DIR/<class>/<image>``, or ``DIR/train/<class>/<image>`` with
``DIR/test/`` (or ``DIR/eval/``) as the evaluation split. Images are stored
as they are (encoded bytes); decoding to pixels is the Transform's job.

Every file is decoded once here, with the same TensorFlow decoder the
Transform uses, so a file that cannot be decoded is skipped and reported
(path and reason) instead of failing the Transform hours later. The run
fails only when more than ``max_bad_fraction`` of the files are bad or a
split ends up empty.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Dict, List, Optional, Tuple

import apache_beam as beam
import tensorflow as tf
from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils
from google.protobuf import json_format, struct_pb2

from tfx_transfer.components import file_kinds
from tfx_transfer.modules import contract, image_budget

# Keys of exec_properties the executor adds for the Beam transform.
_REPORT_DIR = "_tfx_transfer_report_dir"
_GROUPS = "_tfx_transfer_class_groups"
_BUDGET = "_tfx_transfer_image_budget"


class ImageDataError(RuntimeError):
    """The image data cannot make a usable dataset; the message says why and where."""


def hash_split_config(eval_fraction: float,
                      partition_feature: Optional[str] = contract.FILENAME_KEY):
    eval_buckets = max(1, min(99, round(100 * eval_fraction)))
    return example_gen_pb2.Output(
        split_config=example_gen_pb2.SplitConfig(
            splits=[
                example_gen_pb2.SplitConfig.Split(name="train", hash_buckets=100 - eval_buckets),
                example_gen_pb2.SplitConfig.Split(name="eval", hash_buckets=eval_buckets),
            ],
            # Hash the file name, not the serialized example, so the split of
            # an image never changes when features are added.
            partition_feature_name=partition_feature or "",
        ))


def list_images(input_base: str, split_pattern: str) -> Tuple[List[str], List[str]]:
    """(image files, files left out by name as not images: notes, CSVs, hidden files)."""
    images, ignored = [], []
    for f in tf.io.gfile.glob(os.path.join(input_base, split_pattern)):
        if not tf.io.gfile.isdir(f):
            (ignored if file_kinds.is_not_image(f) else images).append(f)
    # Class folders listed in order would be written class after class, and a
    # bounded shuffle buffer in the Trainer would then see one class at a
    # time. A hash order is random-looking yet the same on every run.
    return sorted(images, key=lambda f: hashlib.md5(f.encode()).hexdigest()), sorted(ignored)


def _bytes(v):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))


def _int(v):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))


def image_to_example(path: str, input_base: str, groups: Optional[Dict[str, str]] = None,
                     budget: image_budget.ImageBudget = image_budget.ImageBudget()
                     ) -> Tuple[Optional[tf.train.Example], Optional[Tuple[str, Optional[str]]]]:
    """(example, None) for a good image, (None, (reason, detail)) for a bad one.

    The reason is a plain phrase a user can act on ("empty file", "not an
    image", "truncated or corrupt JPEG"); the detail is the decoder's own
    words, without TensorFlow's op text.

    The header is checked against the image budget before anything decodes it,
    and EXIF-rotated JPEGs are stored upright (the server applies the same
    image_budget.upright to request images)."""
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read()
    except Exception as e:  # noqa: BLE001 -- unreadable for any reason is reported, not raised
        return None, ("unreadable file", f"{type(e).__name__}: {e}")
    if not data:
        return None, ("empty file", None)
    try:
        header = image_budget.check(data, budget)
        data = image_budget.upright(data, header)
    except image_budget.OverBudget as e:
        return None, ("over the image budget", str(e))
    except image_budget.NotAnImage as e:
        return None, (_header_reason(str(e), data), str(e))
    try:
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        height, width = int(image.shape[0]), int(image.shape[1])
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
        return None, (f"truncated or corrupt {header.format}", _without_op_text(e))
    if height == 0 or width == 0:
        return None, ("image with no pixels", f"{height}x{width}")
    label = os.path.basename(os.path.dirname(path))
    features = {
        contract.IMAGE_KEY: _bytes(data),
        contract.LABEL_KEY: _bytes(label.encode()),
        contract.FILENAME_KEY: _bytes(os.path.relpath(path, input_base).encode()),
        contract.HEIGHT_KEY: _int(height),
        contract.WIDTH_KEY: _int(width),
    }
    if groups:
        features[contract.GROUP_KEY] = _bytes(groups[label].encode())
    return tf.train.Example(features=tf.train.Features(feature=features)), None


def _header_reason(message: str, data: bytes) -> str:
    if message.startswith("not a JPEG"):
        return "not an image"
    if "declares no pixels" in message:
        return "image with no pixels"
    if message.startswith("cannot apply the EXIF"):
        return "unreadable EXIF orientation"
    return f"truncated or corrupt {image_budget.kind(data)}"


def _without_op_text(e: Exception) -> str:
    """'{{function_node __wrapped__DecodeImage_device_...}} Invalid PNG data [Op:DecodeImage]'
    -> 'Invalid PNG data'."""
    text = str(getattr(e, "message", e)).splitlines()[0]
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    return re.sub(r"\s*\[Op:\w+\]", "", text).strip()


class _ToExample(beam.DoFn):
    def __init__(self, input_base, groups, budget):
        self._input_base, self._groups, self._budget = input_base, groups, budget

    def process(self, path):
        example, why = image_to_example(path, self._input_base, self._groups, self._budget)
        if example is None:
            reason, detail = why
            yield beam.pvalue.TaggedOutput("bad", json.dumps(
                {"path": path, "reason": reason, **({"detail": detail} if detail else {})}))
        else:
            yield example


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
@beam.typehints.with_output_types(tf.train.Example)
def _ImagesToExample(pipeline: beam.Pipeline, exec_properties: Dict[str, Any],
                     split_pattern: str) -> beam.pvalue.PCollection:
    input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
    groups = json.loads(exec_properties.get(_GROUPS) or "null")
    budget = image_budget.ImageBudget.from_dict(json.loads(exec_properties.get(_BUDGET) or "null"))
    files, _ = list_images(input_base, split_pattern)
    label = split_pattern.replace("*", "x").replace("/", "_")
    results = (pipeline
               | f"ListImages[{label}]" >> beam.Create(files)
               | f"Decode[{label}]" >> beam.ParDo(_ToExample(input_base, groups, budget))
               .with_outputs("bad", main="good"))
    report = os.path.join(exec_properties[_REPORT_DIR], label)
    _ = results.bad | f"ReportBad[{label}]" >> beam.io.WriteToText(report, file_name_suffix=".jsonl")
    return results.good


class Executor(BaseExampleGenExecutor):
    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        return _ImagesToExample

    def Do(self, input_dict, output_dict, exec_properties):
        exec_properties = dict(exec_properties)
        input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
        settings = _settings(exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY))
        max_bad = float(settings.get("max_bad_fraction", 0.01))
        groups = settings.get("class_groups")
        input_config = example_gen_pb2.Input()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY],
                                  input_config)
        totals, ignored = _check_layout(input_base, input_config, groups)

        examples = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.EXAMPLES_KEY])
        report_dir = os.path.join(self._get_tmp_dir(), "skipped")
        exec_properties[_REPORT_DIR] = report_dir
        exec_properties[_GROUPS] = json.dumps(groups)
        exec_properties[_BUDGET] = json.dumps(settings.get("image_budget"))
        super().Do(input_dict, output_dict, exec_properties)

        skipped = []
        for path in tf.io.gfile.glob(os.path.join(report_dir, "*.jsonl")):
            with tf.io.gfile.GFile(path) as f:
                skipped.extend(json.loads(line) for line in f if line.strip())
        skipped.sort(key=lambda s: s["path"])
        io_utils.write_string_file(os.path.join(examples.uri, contract.SKIPPED_FILES_FILE),
                                   json.dumps(skipped, indent=1))
        examples.set_int_custom_property("skipped_files", len(skipped))
        io_utils.write_string_file(os.path.join(examples.uri, contract.IGNORED_FILES_FILE),
                                   json.dumps(ignored, indent=1))
        examples.set_int_custom_property("ignored_files", len(ignored))
        for s in skipped:
            print(f"ImageExampleGen: skipped {s['path']}: {s['reason']} ({s.get('detail')})")
        total = sum(totals.values())
        if total and len(skipped) / total > max_bad:
            raise ImageDataError(
                f"{len(skipped)} of {total} image files ({100 * len(skipped) / total:.1f}%) "
                f"could not be decoded, more than max_bad_fraction={max_bad}. First ones:\n  "
                + "\n  ".join(f"{s['path']}: {s['reason']}" for s in skipped[:10])
                + f"\nAll of them are listed in {os.path.join(examples.uri, contract.SKIPPED_FILES_FILE)}")
        for split in artifact_utils.decode_split_names(examples.split_names):
            split_dir = artifact_utils.get_split_uri([examples], split)
            if not _has_record(split_dir):
                raise ImageDataError(
                    f"split '{split}' is empty after skipping {len(skipped)} bad file(s) "
                    f"(data: {input_base}). Add images, or lower eval_fraction/use train/ and "
                    "test/ folders.")


def _settings(custom_config_json: Optional[str]) -> Dict[str, Any]:
    """ExampleGen's custom_config is a proto holding an Any; ours packs a Struct."""
    if not custom_config_json:
        return {}
    config = example_gen_pb2.CustomConfig()
    proto_utils.json_to_proto(custom_config_json, config)
    struct = struct_pb2.Struct()
    if not config.custom_config.Unpack(struct):
        return {}
    return json_format.MessageToDict(struct)


def _has_record(split_dir: str) -> bool:
    files = tf.io.gfile.glob(os.path.join(split_dir, "*"))
    if not files:
        return False
    for _ in tf.data.TFRecordDataset(files, compression_type="GZIP").take(1):
        return True
    return False


def _check_layout(input_base: str, input_config, groups) -> Tuple[Dict[str, int], List[str]]:
    """Fails early, naming the folder, on layouts that cannot train a classifier.

    Returns the image count per split and the files left out by name."""
    if not tf.io.gfile.isdir(input_base):
        raise ImageDataError(f"image folder {input_base} does not exist")
    totals, classes, ignored = {}, {}, []
    for split in input_config.splits:
        files, left_out = list_images(input_base, split.pattern)
        ignored += left_out
        where = os.path.join(input_base, split.pattern)
        if not files:
            raise ImageDataError(
                f"no image files match {where} (split '{split.name}'). Expected "
                "DIR/<class>/<image> or DIR/train/<class>/<image> + DIR/test/<class>/<image>.")
        totals[split.name] = len(files)
        classes[split.name] = {os.path.basename(os.path.dirname(f)) for f in files}
    if "train" in classes and "eval" in classes:
        unseen = sorted(classes["eval"] - classes["train"])
        if unseen:
            raise ImageDataError(
                f"classes {unseen} appear in the eval split but not in train "
                f"({input_base}); the model cannot learn them.")
    all_classes = set().union(*classes.values())
    if len(classes.get("train", all_classes)) < 2:
        raise ImageDataError(f"{input_base} has fewer than 2 classes: {sorted(all_classes)}")
    if groups:
        missing = sorted(all_classes - set(groups))
        if missing:
            raise ImageDataError(f"class_groups has no group for classes {missing}")
    return totals, sorted(ignored)


class ImageExampleGen(FileBasedExampleGen):
    """FileBasedExampleGen over image folders (same outputs, driver and caching)."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(self, input_base, input_config: example_gen_pb2.Input,
                 output_config: Optional[example_gen_pb2.Output] = None,
                 max_bad_fraction: float = 0.01, class_groups: Optional[Dict[str, str]] = None,
                 image_budget: Optional[Dict[str, int]] = None):
        """input_base: a folder, or a RuntimeParameter; the splits are decided by
        the caller (pipeline/data_sources.py), which knows the layout."""
        settings = struct_pb2.Struct()
        settings.update({"max_bad_fraction": max_bad_fraction, "class_groups": class_groups,
                         "image_budget": image_budget})
        custom_config = example_gen_pb2.CustomConfig()
        custom_config.custom_config.Pack(settings)
        super().__init__(
            input_base=input_base,
            input_config=input_config,
            output_config=output_config,
            custom_config=custom_config,
        )
