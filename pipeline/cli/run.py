"""tfx-transfer run / backbones.

`run` in order: the config and the preflight checks use the standard library,
PyYAML and h5py only, so a mistake is rejected in well under a second and
nothing is written. TensorFlow/TFX are imported only once the run can start,
inside the progress view, so their import noise goes to the run log.
"""
from __future__ import annotations

import json
import os
import sys
import time

from tfx_transfer.pipeline import preflight
from tfx_transfer.pipeline.cli import progress, report
from tfx_transfer.pipeline.cli.options import add_output_flags, add_run_flags, config_from_args

INTERRUPTED = 130  # the shell's code for a run ended by Ctrl-C (128 + SIGINT)


def cmd_run(args) -> int:
    config = config_from_args(args)
    preflight.check_run(config)
    verbosity = progress.verbosity(args)
    output, data = config.deploy.output, config.data.data
    try:
        os.makedirs(os.path.join(output, progress.LOG_DIR), exist_ok=True)
    except OSError as e:
        raise preflight.PreflightError(f"output {output} cannot be created: {e.strerror}") from None
    if verbosity != progress.QUIET:
        print(f"tfx-transfer: {config.model.backbone} {config.training.mode} on {data} -> {output} "
              f"(full log: {output}/logs/{progress.RUN_LOG})", flush=True)
    start = time.time()
    with progress.run_view(output, verbosity,
                           totals=preflight.expected_examples(data, config.data.eval_fraction)):
        from tfx_transfer.modules import backbones
        from tfx_transfer.pipeline import data_sources
        from tfx_transfer.pipeline.runners import local

        config = data_sources.prepare(config)
        m = config.model
        # Fail before any component runs when the weights cannot be had.
        backbones.resolve_weights(m.backbone, m.image_size, m.weights)
        with progress.component_hooks():
            summary = local.run(config)
    if verbosity != progress.QUIET:
        print(f"finished in {progress.seconds(time.time() - start)}\n")
    print(report.result_block(summary, output))
    return 0


def interrupted() -> int:
    print("\ntfx-transfer: interrupted. Run the same command again to resume: finished components "
          "are reused from the cache (unless --no-cache).", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    # Beam and TensorFlow worker threads would keep the process alive (and
    # print their own tracebacks) while they wind down; the cache is in MLMD.
    os._exit(INTERRUPTED)


def cmd_backbones(args) -> int:
    from tfx_transfer.modules import backbones

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
    p = sub.add_parser("run", help="run the pipeline locally",
                       description="Run the pipeline locally: progress here, full log in "
                                   "<output>/logs/run.log, result at the end.")
    add_run_flags(p)
    add_output_flags(p)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("backbones", help="list the registered backbones")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_backbones)
