"""Local runners: LocalDagRunner and BeamDagRunner over MLMD on SQLite."""
from __future__ import annotations

import logging
import os
import resource
import time
from typing import List

from tfx_transfer.pipeline.config import RunConfig
from tfx_transfer.pipeline.runners.summary import metadata_path, summary_path, write_summary

__all__ = ["run", "build", "beam_args", "metadata_path", "summary_path"]
log = logging.getLogger("tfx_transfer")

# Beam 2.74's DirectRunner first tries to download a Prism binary, which fails
# offline; the in-process FnApiRunner is what DirectRunner ran before anyway.
DEFAULT_BEAM_ARGS = ["--runner=FnApiRunner", "--direct_num_workers=1"]


# Without one of these, every Beam component of TFX (ExampleGen, StatisticsGen,
# Transform, Evaluator) copies TFX's install and builds an sdist of it to stage
# on remote workers (tfx/utils/dependency_utils.py): 1.5-3 s each. In-process
# runners stage nothing, and they ignore a container image.
DEPENDENCY_FLAGS = ("--extra_package", "--setup_file", "--requirements_file",
                    "--sdk_container_image", "--worker_harness_container_image")
IN_PROCESS_RUNNERS = ("FnApiRunner", "DirectRunner", "BundleBasedDirectRunner")
NO_STAGING = "--sdk_container_image=unused-by-in-process-runners"


def beam_args(config: RunConfig) -> List[str]:
    args = list(config.deploy.beam_args)
    if not any(a.startswith("--runner") for a in args):
        args = DEFAULT_BEAM_ARGS + args
    return args


def local_beam_args(config: RunConfig) -> List[str]:
    """beam_args, and no TFX sdist when the runner runs in this process."""
    args = beam_args(config)
    runner = next(a.split("=", 1)[-1] for a in args if a.startswith("--runner"))
    if runner in IN_PROCESS_RUNNERS and not any(a.startswith(DEPENDENCY_FLAGS) for a in args):
        args.append(NO_STAGING)
    return args


def pipeline_root(config: RunConfig) -> str:
    return os.path.join(os.path.abspath(config.deploy.output), "pipeline_root")


def build(config: RunConfig):
    from tfx.orchestration import metadata

    from tfx_transfer.pipeline.pipeline import create_pipeline

    os.makedirs(config.deploy.output, exist_ok=True)
    return create_pipeline(
        config,
        pipeline_root=pipeline_root(config),
        metadata_connection_config=metadata.sqlite_metadata_connection_config(
            metadata_path(config)),
        beam_pipeline_args=local_beam_args(config))


def run(config: RunConfig) -> dict:
    """Runs the pipeline with the configured local runner; returns the summary.

    One run per output at a time; a killed run's leftovers are cleaned first."""
    from tfx_transfer.pipeline import run_lock

    dep = config.deploy
    with run_lock.hold(dep.output) as stale:
        run_lock.recover(pipeline_root(config), metadata_path(config),
                         os.path.join(dep.resolved_serving_dir, dep.model_name), stale)
        return _run(config)


def _run(config: RunConfig) -> dict:
    pipeline = build(config)
    if config.deploy.runner == "local":
        from tfx.orchestration.local.local_dag_runner import LocalDagRunner

        runner = LocalDagRunner()
    else:
        # Runs each component as a Beam stage.
        from tfx.orchestration.beam.beam_dag_runner import BeamDagRunner

        runner = BeamDagRunner()
    log.info("running %s with %s: %d components, output %s", config.deploy.pipeline_name,
             type(runner).__name__, len(pipeline.components), config.deploy.output)
    start = time.time()
    runner.run(pipeline)
    wall = time.time() - start
    peak_mb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    return write_summary(config, wall_s=wall, peak_rss_mb=peak_mb)
