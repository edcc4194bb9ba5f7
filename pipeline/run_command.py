"""`tfx-transfer run`: flags, checks before any heavy import, progress, result.

Order matters: the config and preflight checks use the standard library,
PyYAML and h5py only, so a mistake is rejected in well under a second and
nothing is written. TensorFlow/TFX are imported only once the run can start,
inside the progress view, so their import noise goes to the run log.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Any, Dict, List

from pipeline import preflight, progress, report
from pipeline.config import AUGMENTATIONS, ConfigError, RunConfig

INTERRUPTED = 130  # the shell's code for a run ended by Ctrl-C (128 + SIGINT)

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RunConfig)
             if f.default is not dataclasses.MISSING}


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


def add_flags(p: argparse.ArgumentParser) -> None:
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


def config_from(args) -> RunConfig:
    overrides = {f: getattr(args, f, None) for _, f, _, _ in FIELD_FLAGS}
    overrides.update({k: getattr(args, k, None) for k in ("runner", "projector", "enable_cache")})
    overrides["augment"] = getattr(args, "augment", None)
    overrides.update(set_fields(getattr(args, "set_fields", None) or []))
    config = RunConfig.load(getattr(args, "config", None), **overrides)
    if not config.data:
        raise ConfigError("config field 'data': no data given (--data DIR or data: in --config)")
    return config


def run(args) -> int:
    config = config_from(args)
    preflight.check_run(config)
    verbosity = progress.QUIET if args.quiet else progress.VERBOSE if args.verbose else progress.NORMAL
    try:
        os.makedirs(os.path.join(config.output, progress.LOG_DIR), exist_ok=True)
    except OSError as e:
        raise preflight.PreflightError(f"output {config.output} cannot be created: {e.strerror}") from None
    if verbosity != progress.QUIET:
        print(f"tfx-transfer: {config.backbone} {config.mode} on {config.data} -> {config.output} "
              f"(full log: {config.output}/logs/{progress.RUN_LOG})", flush=True)
    ignored = preflight.ignored_files(config.data)
    if ignored:
        with open(os.path.join(config.output, preflight.IGNORED_FILE), "w") as f:
            json.dump(ignored, f, indent=1)
    start = time.time()
    with progress.run_view(config.output, verbosity,
                           totals=preflight.expected_examples(config.data, config.eval_fraction)):
        from modules import backbones, transform
        from pipeline import data_sources, runners

        config = data_sources.prepare(config)
        backbones.resolve_weights(config.backbone, transform.image_size(config.trainer_config()),
                                  config.weights)
        with progress.component_hooks():
            summary = runners.run(config)
    summary["ignored_files"] = len(ignored)
    if verbosity != progress.QUIET:
        print(f"finished in {progress.seconds(time.time() - start)}\n")
    print(report.result_block(summary, config.output))
    return 0


def interrupted() -> int:
    print("\ntfx-transfer: interrupted. Run the same command again to resume: finished components "
          "are reused from the cache (unless --no-cache).", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    # Beam and TensorFlow worker threads would keep the process alive (and
    # print their own tracebacks) while they wind down; the cache is in MLMD.
    os._exit(INTERRUPTED)
