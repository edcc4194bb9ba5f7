"""tfx-transfer command line.

    tfx-transfer run --data DIR [--config FILE] [--backbone NAME] [--mode MODE] ...
    tfx-transfer backbones
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import sys
from typing import List, Optional

from modules import keras_compat  # noqa: F401


def _add_run_flags(p: argparse.ArgumentParser):
    p.add_argument("--config", help="YAML run config; flags override its values")
    p.add_argument("--data", help="image folder, TFRecord files, or tfds:NAME")
    p.add_argument("--backbone")
    p.add_argument("--mode", choices=["linear_probe", "fine_tune", "lp_ft"])
    p.add_argument("--image-size", type=int, dest="image_size")
    p.add_argument("--epochs", type=int)
    p.add_argument("--fine-tune-epochs", type=int, dest="fine_tune_epochs")
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument("--weights", help="imagenet | none | PATH to a weights file")
    p.add_argument("--output", help="run directory (pipeline root, MLMD, summary.json)")
    p.add_argument("--serving-dir", dest="serving_dir")
    p.add_argument("--runner", choices=["local", "beam"])
    p.add_argument("--no-projector", dest="projector", action="store_false", default=None)
    p.add_argument("--no-cache", dest="enable_cache", action="store_false", default=None)


def _config_from(args):
    from pipeline.config import RunConfig

    overrides = {k: getattr(args, k, None) for k in (
        "data", "backbone", "mode", "image_size", "epochs", "fine_tune_epochs", "batch_size",
        "weights", "output", "serving_dir", "runner", "projector", "enable_cache")}
    config = RunConfig.load(args.config, **overrides)
    if not config.data:
        from pipeline.config import ConfigError

        raise ConfigError("config field 'data': no data given (--data DIR or data: in --config)")
    return config


def cmd_run(args) -> int:
    from modules import backbones
    from pipeline import data_sources, runners

    config = _config_from(args)
    config = data_sources.prepare(config)
    # Fail before any component runs when ImageNet weights cannot be had.
    from modules import transform

    backbones.resolve_weights(config.backbone, transform.image_size(config.trainer_config()),
                              config.weights)
    summary = runners.run(config)
    m = summary.get("metrics", {})
    print(f"\n{config.backbone} {config.mode} @ {summary['image_size']}px: "
          f"accuracy {m.get('accuracy')}, top-5 {m.get('top5_accuracy')}, "
          f"blessed={summary['blessed']}, pushed to {summary['pushed_model_dir']}"
          + (f" ({summary['push_result']})" if summary.get("push_result") else ""))
    print("timings (s): " + ", ".join(f"{k} {v}" for k, v in summary["timings_s"].items()))
    print(f"summary: {config.output}/summary.json")
    return 0


def cmd_backbones(args) -> int:
    from modules import backbones

    rows = [(b.name, b.family, b.default_size, b.preprocessing) for b in backbones.REGISTRY.values()]
    if args.json:
        print(json.dumps([dict(zip(("name", "family", "input_size", "preprocessing"), r))
                          for r in rows], indent=1))
        return 0
    print(f"{'name':20} {'family':14} {'input':>5}  preprocessing")
    for name, family, size, prep in rows:
        print(f"{name:20} {family:14} {size:>5}  {prep}: {backbones.PREPROCESS_MODES[prep]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfx-transfer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the pipeline locally")
    _add_run_flags(p)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("backbones", help="list the registered backbones")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_backbones)
    # Commands of the other parts of the project, present as they land.
    for name in ("pipeline.compare", "serving.cli", "pipeline.kubeflow"):
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).register(sub)
    return parser


# Errors that mean bad input (data, config, weights): one line and exit 2, no
# traceback. Looked up among the modules already imported, so that `predict` and
# `serve` do not pay for importing TFX just to name ImageDataError.
_USER_ERRORS = (("pipeline.config", "ConfigError"), ("modules.backbones", "WeightsUnavailable"),
                ("components.image_example_gen", "ImageDataError"),
                ("pipeline.data_sources", "DataSourceError"), ("pipeline.run_lock", "RunLocked"))


def _user_errors() -> tuple:
    return tuple(getattr(sys.modules[m], n) for m, n in _USER_ERRORS if m in sys.modules)


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as e:  # noqa: BLE001 -- re-raised unless it is a user error
        if not isinstance(e, _user_errors()):
            raise
        print(f"tfx-transfer: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
