"""Flags shared by the commands that build a pipeline (run, compare, compile),
and the run config they make: one place turns flags into a RunConfig."""
from __future__ import annotations

import argparse
from typing import Any, Dict, List

from tfx_transfer.pipeline.config import AUGMENTATIONS, ConfigError, RunConfig

_DEFAULTS = RunConfig().flat()


_DEFAULT_WORDS = {"data": "none, required", "image_size": "the backbone's own",
                  "serving_dir": "<output>/serving"}


def _d(field: str) -> str:
    return _DEFAULT_WORDS.get(field) or str(_DEFAULTS.get(field))


# (flag, config field, type, help) of the flags that set a config field.
FIELD_FLAGS = (
    ("--data", "data", str, "image folder (DIR/<class>/<image> or DIR/train + DIR/test), "
                            "a folder of .tfrecord files, or tfds:NAME"),
    ("--backbone", "backbone", str, "Keras Applications backbone; `tfx-transfer backbones` lists them"),
    ("--mode", "mode", str, "linear_probe (frozen backbone), fine_tune, or lp_ft (probe, then fine-tune)"),
    ("--image-size", "image_size", int, "input size in pixels"),
    ("--epochs", "epochs", int, "probe epochs"),
    ("--fine-tune-epochs", "fine_tune_epochs", int, "fine-tuning epochs (fine_tune, lp_ft)"),
    ("--batch-size", "batch_size", int, "images per training step"),
    ("--learning-rate", "learning_rate", float, "learning rate of the head"),
    ("--fine-tune-learning-rate", "fine_tune_learning_rate", float,
     "learning rate of the unfrozen backbone blocks"),
    ("--unfreeze-groups", "unfreeze_groups", int,
     "top backbone blocks unfrozen when fine-tuning"),
    ("--min-accuracy", "min_accuracy", float, "lowest accuracy (0-1) a model needs to be blessed"),
    ("--weights", "weights", str, "imagenet | none | PATH to a Keras .h5 weights file"),
    ("--output", "output", str, "run folder: pipeline root, metadata, summary.json, logs/run.log"),
    ("--serving-dir", "serving_dir", str, "where blessed models are pushed"),
)


def add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML run config; flags override its values")
    for flag, field, type_, text in FIELD_FLAGS:
        choices = ("linear_probe", "fine_tune", "lp_ft") if field == "mode" else None
        p.add_argument(flag, dest=field, type=type_, choices=choices,
                       help=f"{text} (default: {_d(field)})")
    p.add_argument("--augment", action="append", choices=AUGMENTATIONS, metavar="AUG",
                   help=f"training augmentation, repeatable: {', '.join(AUGMENTATIONS)} "
                        "(default: none; turns the feature cache off)")
    p.add_argument("--runner", choices=["local", "beam"],
                   help=f"local runner (default: {_d('runner')})")
    p.add_argument("--no-projector", dest="projector", action="store_false", default=None,
                   help="skip the EmbeddingProjector component (default: it runs)")
    p.add_argument("--no-cache", dest="enable_cache", action="store_false", default=None,
                   help="rerun every component instead of reusing finished ones (default: reuse)")
    p.add_argument("--set", dest="set_fields", action="append", default=[], metavar="FIELD=VALUE",
                   help="any config field, repeatable; VALUE is read as YAML "
                        "(--set label_smoothing=0.1 --set augment=[flip,crop])")


def add_output_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--verbose", action="store_true",
                   help="also show the full TFX/Beam/TensorFlow log (always in <output>/logs/run.log)")
    g.add_argument("--quiet", action="store_true", help="print only the result")


def set_fields(items: List[str]) -> Dict[str, Any]:
    import yaml

    out = {}
    for item in items:
        field, sep, value = item.partition("=")
        if not sep or not field:
            raise ConfigError(f"--set expects FIELD=VALUE, got {item!r}")
        try:
            out[field.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--set {field}: {value!r} is not a valid value") from None
    return out


def config_from_args(args, **extra) -> RunConfig:
    """The run config of --config, the flags, --set (and extra fields, e.g. compile's), checked."""
    overrides = {f: getattr(args, f, None) for _, f, _, _ in FIELD_FLAGS}
    overrides.update({k: getattr(args, k, None) for k in ("runner", "projector", "enable_cache")})
    overrides["augment"] = getattr(args, "augment", None)
    overrides.update(extra)
    overrides.update(set_fields(getattr(args, "set_fields", None) or []))
    return RunConfig.load(getattr(args, "config", None), **overrides).require_data()


