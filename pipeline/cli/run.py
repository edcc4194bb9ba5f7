"""tfx-transfer run / backbones."""
from __future__ import annotations

import json

from pipeline.cli.options import add_run_flags, config_from_args


def cmd_run(args) -> int:
    from modules import backbones
    from pipeline import data_sources
    from pipeline.runners import local

    config = data_sources.prepare(config_from_args(args))
    m = config.model
    # Fail before any component runs when the weights cannot be had.
    backbones.resolve_weights(m.backbone, m.image_size, m.weights)
    summary = local.run(config)
    metrics = summary.get("metrics", {})
    print(f"\n{m.backbone} {config.training.mode} @ {summary['image_size']}px: "
          f"accuracy {metrics.get('accuracy')}, top-5 {metrics.get('top5_accuracy')}, "
          f"blessed={summary['blessed']}, pushed to {summary['pushed_model_dir']}")
    print("timings (s): " + ", ".join(f"{k} {v}" for k, v in summary["timings_s"].items()))
    print(f"summary: {local.summary_path(config)}")
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


def register(sub) -> None:
    p = sub.add_parser("run", help="run the pipeline locally")
    add_run_flags(p)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("backbones", help="list the registered backbones")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_backbones)
