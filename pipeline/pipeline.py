"""create_pipeline(config): the component graph, and nothing about runners.

Local, Beam and Kubeflow runners (pipeline/runners/) all run the pipeline
this function returns. What differs between them comes in as arguments: the
pipeline root and metadata store, Beam's arguments, and on Kubeflow the
runtime parameters that replace the data root and the module config.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, List, Optional

import tensorflow_model_analysis as tfma
# TFX's modules, not its `tfx.v1` facade: importing tfx.v1 also imports its
# Google Cloud extensions (Vertex AI, BigQuery clients), 2.4 s of every run.
from tfx.components import (Evaluator, ExampleValidator, Pusher, SchemaGen, StatisticsGen,
                            Trainer, Transform)
from tfx.dsl.components.common.resolver import Resolver
from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import (
    LatestBlessedModelStrategy)
from tfx.orchestration import pipeline as tfx_pipeline
from tfx.proto import pusher_pb2, trainer_pb2
from tfx.types import Channel, standard_artifacts

from tfx_transfer.components import atomic_pusher
from tfx_transfer.modules import contract
from tfx_transfer.pipeline import blessing, data_sources
from tfx_transfer.pipeline.config import RunConfig

# Module code by import path, not module_file: the container image has the
# project installed, so Kubeflow needs no module upload.
TRANSFORM_FN = "tfx_transfer.modules.transform.preprocessing_fn"
RUN_FN = "tfx_transfer.modules.trainer.run_fn"


@dataclasses.dataclass
class RuntimeInputs:
    """Kubeflow runtime parameters (TFX RuntimeParameter).

    data_root replaces the data folder; module_config replaces the JSON
    custom_config of both the Transform and the Trainer, so that the
    preprocessing and the model stay in step when a run changes the backbone.
    """
    data_root: Any = None
    module_config: Any = None


def eval_config(config: RunConfig, num_classes: Optional[int]) -> tfma.EvalConfig:
    ev = config.evaluation
    metrics = [
        tfma.MetricConfig(
            class_name="SparseCategoricalAccuracy",
            threshold=tfma.MetricThreshold(
                # A new model may be at most max_accuracy_drop worse than the
                # last blessed one; the first run has no baseline and passes.
                change_threshold=tfma.GenericChangeThreshold(
                    direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                    absolute={"value": -ev.max_accuracy_drop})),
            # The accuracy bar is for the whole eval set: on a per-class slice
            # any weak class would fall under the majority-class bar.
            per_slice_thresholds=[tfma.PerSliceMetricThreshold(
                slicing_specs=[tfma.SlicingSpec()],
                threshold=tfma.MetricThreshold(value_threshold=tfma.GenericValueThreshold(
                    lower_bound={"value": blessing.threshold(config)["threshold"]})))]),
        tfma.MetricConfig(class_name="MultiClassConfusionMatrixPlot"),
        tfma.MetricConfig(class_name="ExampleCount"),
    ]
    if num_classes is None or num_classes >= 5:
        metrics.append(tfma.MetricConfig(class_name="SparseTopKCategoricalAccuracy",
                                         config='{"k": 5}'))
    slicing = [tfma.SlicingSpec(), tfma.SlicingSpec(feature_keys=[contract.LABEL_KEY])]
    if config.data.class_groups:
        slicing.append(tfma.SlicingSpec(feature_keys=[contract.GROUP_KEY]))
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(
            signature_name=contract.SERVING_DEFAULT,
            # Stated, so TFMA does not load the model with Keras first to find
            # out (a whole extra load); it reads the signatures either way.
            model_type=tfma.TF_GENERIC,
            label_key=contract.LABEL_ID_KEY,
            prediction_key=contract.PROBABILITIES,
            # The label is a class name; this signature maps it to the id the
            # model predicts, through the Transform's vocabulary.
            preprocessing_function_names=[contract.TRANSFORM_FEATURES])],
        slicing_specs=slicing,
        metrics_specs=[tfma.MetricsSpec(metrics=metrics)])


def trainer_custom_config(config: RunConfig) -> dict:
    """The Trainer's custom_config: the module config, plus the TFJob settings
    when the Trainer runs as a TFJob (its executor reads them from there)."""
    custom_config = config.module.to_custom_config()
    if config.deploy.tfjob_workers:
        from tfx_transfer.components import tfjob_trainer

        custom_config[contract.TFJOB_CONFIG_KEY] = tfjob_trainer.settings(config)
    return custom_config


def tfjob_executor(config: RunConfig) -> dict:
    if not config.deploy.tfjob_workers:
        return {}
    from tfx_transfer.components import tfjob_trainer

    return {"custom_executor_spec": tfjob_trainer.EXECUTOR_SPEC}


def create_pipeline(config: RunConfig, pipeline_root: Optional[str] = None,
                    metadata_connection_config=None,
                    beam_pipeline_args: Optional[List[str]] = None,
                    runtime: Optional[RuntimeInputs] = None) -> tfx_pipeline.Pipeline:
    runtime = runtime or RuntimeInputs()
    example_gen = data_sources.example_gen(config, data_root=runtime.data_root)
    components = [example_gen]

    statistics_gen = StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = SchemaGen(statistics=statistics_gen.outputs["statistics"],
                           infer_feature_shape=True)
    example_validator = ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
    components += [statistics_gen, schema_gen, example_validator]

    transform = Transform(
        examples=example_gen.outputs["examples"], schema=schema_gen.outputs["schema"],
        preprocessing_fn=TRANSFORM_FN,
        # Decoded float images are ~100x the size of the JPEGs: the graph is
        # applied on the fly by the Trainer, TFMA and the serving signatures.
        materialize=False,
        # Post-transform statistics would decode and resize every image and
        # profile ~30k float features each (11.5 GB RSS on CIFAR-10 at 96 px);
        # StatisticsGen already profiles the raw data.
        disable_statistics=True,
        # Only the model section: a change of epochs must not invalidate the
        # cached Transform.
        custom_config={"model": config.model.to_dict()})
    if runtime.module_config is not None:
        # Transform, unlike Trainer, takes no RuntimeParameter as custom_config
        # in its constructor; KubeflowV2 reads it as a whole exec property.
        transform.exec_properties["custom_config"] = runtime.module_config
    components.append(transform)

    trainer = Trainer(
        run_fn=RUN_FN,
        examples=example_gen.outputs["examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        train_args=trainer_pb2.TrainArgs(splits=["train"]),
        eval_args=trainer_pb2.EvalArgs(splits=["eval"]),
        custom_config=(runtime.module_config if runtime.module_config is not None
                       else trainer_custom_config(config)),
        **tfjob_executor(config))
    components.append(trainer)

    ev = config.evaluation
    evaluator_inputs = {}
    if ev.baseline:
        model_resolver = Resolver(
            strategy_class=LatestBlessedModelStrategy,
            model=Channel(type=standard_artifacts.Model),
            model_blessing=Channel(type=standard_artifacts.ModelBlessing),
        ).with_id("latest_blessed_model_resolver")
        components.append(model_resolver)
        evaluator_inputs["baseline_model"] = model_resolver.outputs["model"]
    # Without a baseline every run is judged like a first run: value threshold only.
    evaluator = Evaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        eval_config=eval_config(config, data_sources.class_count(config.data.data)),
        **evaluator_inputs)
    components.append(evaluator)

    if ev.projector:
        from tfx_transfer.components.embedding_projector import EmbeddingProjector

        components.append(EmbeddingProjector(
            examples=example_gen.outputs["examples"],
            transform_graph=transform.outputs["transform_graph"],
            model=trainer.outputs["model"],
            num_samples=ev.projector_samples,
            seed=config.training.seed))

    dep = config.deploy
    pusher = Pusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        push_destination=pusher_pb2.PushDestination(
            filesystem=pusher_pb2.PushDestination.Filesystem(
                base_directory=os.path.join(dep.resolved_serving_dir, dep.model_name))),
        # Versions appear whole or not at all, and an unchanged model is not pushed again.
        custom_executor_spec=atomic_pusher.EXECUTOR_SPEC)
    components.append(pusher)

    return tfx_pipeline.Pipeline(
        pipeline_name=dep.pipeline_name,
        pipeline_root=pipeline_root or os.path.join(dep.output, "pipeline_root"),
        components=components,
        enable_cache=dep.enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args if beam_pipeline_args is not None else dep.beam_args)
