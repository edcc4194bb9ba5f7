"""The data components under Beam's multi-process mode (issue #10, item 6).

`--direct_running_mode=multi_processing --direct_num_workers=2` runs each Beam
stage in separate worker processes: what a DoFn needs must pickle, nothing can
lean on state shared with the pipeline's process. It is the closest local
stand-in for Dataflow, Flink or Spark workers (docs/kubeflow.md has their
arguments).
"""
import os

import pytest

MULTI_PROCESS = ["--runner=FnApiRunner", "--direct_running_mode=multi_processing",
                 "--direct_num_workers=2"]


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(3600)
def test_data_components_run_in_beam_worker_processes(tiny_run, tmp_path):
    from conftest import tiny_config
    from tfx_transfer.pipeline.runners import local

    _, reference = tiny_run
    config = tiny_config(tmp_path / "mp", beam_args=MULTI_PROCESS)
    assert config.deploy.beam_args == MULTI_PROCESS
    summary = local.run(config)
    states = summary["component_states"]
    for component in ("ImageExampleGen", "StatisticsGen", "Transform", "Evaluator",
                      "EmbeddingProjector", "Pusher"):
        assert states.get(component) == "COMPLETE", (component, states)
    # The same examples went through: counts, skipped files and classes as the in-process run.
    for key in ("train_examples", "eval_examples", "classes", "skipped_files"):
        assert summary[key] == reference[key], key
    assert summary["metrics"]["example_count"] == reference["metrics"]["example_count"]
    assert summary["projector"]["num_samples"] == reference["projector"]["num_samples"]
    assert os.path.isdir(summary["pushed_model_dir"])
