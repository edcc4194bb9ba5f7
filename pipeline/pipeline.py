"""create_pipeline(config): the component graph, and nothing about runners.

Local, Beam and Kubeflow runners (pipeline/runners.py, pipeline/kubeflow.py)
all run the pipeline this function returns.
"""
from __future__ import annotations

import os
from typing import List, Optional

import tensorflow_model_analysis as tfma
from tfx import v1 as tfx
from tfx.proto import example_gen_pb2

from components import atomic_pusher
from components.image_example_gen import ImageExampleGen, hash_split_config
from pipeline.config import RunConfig

TRANSFORM_FN = "modules.transform.preprocessing_fn"
RUN_FN = "modules.trainer.run_fn"
ACCURACY = "sparse_categorical_accuracy"
TOP5 = "sparse_top_k_categorical_accuracy"


def _record_files(data: str) -> List[str]:
    # "_DONE"-style markers and hidden files are not data.
    return [f for f in os.listdir(data) if not f.startswith((".", "_"))]


def is_tfrecord_input(data: str) -> bool:
    if os.path.isdir(data):
        files = _record_files(data)
        return bool(files) and all(".tfrecord" in f for f in files)
    return False


def tfrecord_example_gen(config: RunConfig):
    """ImportExampleGen over a folder of TFRecord files of tf.Examples.

    Files named train* and eval*/test* are the splits; otherwise a hash of
    the file name splits the records like an image folder."""
    files = _record_files(config.data)
    train = [f for f in files if f.startswith("train")]
    evals = [f for f in files if f.startswith(("eval", "test"))]
    if train and evals:
        eval_prefix = "eval" if any(f.startswith("eval") for f in evals) else "test"
        return tfx.components.ImportExampleGen(
            input_base=config.data,
            input_config=example_gen_pb2.Input(splits=[
                example_gen_pb2.Input.Split(name="train", pattern="train*"),
                example_gen_pb2.Input.Split(name="eval", pattern=f"{eval_prefix}*")]))
    output_config = hash_split_config(config.eval_fraction, partition_feature=None)
    return tfx.components.ImportExampleGen(input_base=config.data, output_config=output_config)


def class_count(data: str) -> Optional[int]:
    """Number of classes when it can be known before running (image folders)."""
    if not os.path.isdir(data) or is_tfrecord_input(data):
        return None
    root = data
    for split in ("train",):
        if os.path.isdir(os.path.join(data, split)):
            root = os.path.join(data, split)
    return len([d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))])


def eval_config(config: RunConfig, num_classes: Optional[int]) -> tfma.EvalConfig:
    metrics = [
        tfma.MetricConfig(
            class_name="SparseCategoricalAccuracy",
            threshold=tfma.MetricThreshold(
                value_threshold=tfma.GenericValueThreshold(lower_bound={"value": config.min_accuracy}),
                # A new model may be at most max_accuracy_drop worse than the
                # last blessed one; the first run has no baseline and passes.
                change_threshold=tfma.GenericChangeThreshold(
                    direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                    absolute={"value": -config.max_accuracy_drop}))),
        tfma.MetricConfig(class_name="MultiClassConfusionMatrixPlot"),
        tfma.MetricConfig(class_name="ExampleCount"),
    ]
    if num_classes is None or num_classes >= 5:
        metrics.append(tfma.MetricConfig(class_name="SparseTopKCategoricalAccuracy",
                                         config='{"k": 5}'))
    slicing = [tfma.SlicingSpec(), tfma.SlicingSpec(feature_keys=["label"])]
    if config.class_groups:
        slicing.append(tfma.SlicingSpec(feature_keys=["group"]))
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(
            signature_name="serving_default",
            label_key="label_id",
            prediction_key="probabilities",
            # The label is a class name; this signature maps it to the id the
            # model predicts, through the Transform's vocabulary.
            preprocessing_function_names=["transform_features"])],
        slicing_specs=slicing,
        metrics_specs=[tfma.MetricsSpec(metrics=metrics)])


def _trainer_executor(config: RunConfig, trainer_cfg: dict) -> dict:
    """Trainer custom_config (and executor: a TFJob launcher when config.tfjob_workers > 0)."""
    if not config.tfjob_workers:
        return {"custom_config": trainer_cfg}
    from components import tfjob_trainer

    return {"custom_config": {**trainer_cfg, tfjob_trainer.CONFIG_KEY: tfjob_trainer.settings(config)},
            "custom_executor_spec": tfjob_trainer.EXECUTOR_SPEC}


def create_pipeline(config: RunConfig, pipeline_root: Optional[str] = None,
                    metadata_connection_config=None,
                    beam_pipeline_args: Optional[List[str]] = None) -> tfx.dsl.Pipeline:
    components = []
    if is_tfrecord_input(config.data):
        example_gen = tfrecord_example_gen(config)
    else:
        example_gen = ImageExampleGen(
            input_base=config.data, eval_fraction=config.eval_fraction,
            max_bad_fraction=config.max_bad_fraction, class_groups=config.class_groups,
            layout=config.data_layout, image_budget=config.image_budget())
    components.append(example_gen)

    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = tfx.components.SchemaGen(statistics=statistics_gen.outputs["statistics"],
                                          infer_feature_shape=True)
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
    components += [statistics_gen, schema_gen, example_validator]

    trainer_cfg = config.trainer_config()
    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"], schema=schema_gen.outputs["schema"],
        preprocessing_fn=TRANSFORM_FN,
        # Decoded float images are ~100x the size of the JPEGs: the graph is
        # applied on the fly by the Trainer, TFMA and the serving signatures.
        materialize=False,
        # Post-transform statistics would decode and resize every image and
        # profile ~30k float features each (11.5 GB RSS on CIFAR-10 at 96 px);
        # StatisticsGen already profiles the raw data.
        disable_statistics=True,
        custom_config={"backbone": config.backbone, "image_size": config.image_size})
    components.append(transform)

    trainer = tfx.components.Trainer(
        run_fn=RUN_FN,
        examples=example_gen.outputs["examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        train_args=tfx.proto.TrainArgs(splits=["train"]),
        eval_args=tfx.proto.EvalArgs(splits=["eval"]),
        **_trainer_executor(config, trainer_cfg))
    components.append(trainer)

    model_resolver = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model_resolver")
    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        # Without a baseline every run is judged like a first run: value threshold only.
        baseline_model=model_resolver.outputs["model"] if config.baseline else None,
        eval_config=eval_config(config, class_count(config.data)))
    components += [model_resolver, evaluator] if config.baseline else [evaluator]

    if config.projector:
        from components.embedding_projector import EmbeddingProjector

        components.append(EmbeddingProjector(
            examples=example_gen.outputs["examples"],
            transform_graph=transform.outputs["transform_graph"],
            model=trainer.outputs["model"],
            num_samples=config.projector_samples,
            seed=config.seed))

    pusher = tfx.components.Pusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(
                base_directory=os.path.join(config.resolved_serving_dir, config.model_name))),
        # Versions appear whole or not at all, and an unchanged model is not pushed again.
        custom_executor_spec=atomic_pusher.EXECUTOR_SPEC)
    components.append(pusher)

    return tfx.dsl.Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=pipeline_root or os.path.join(config.output, "pipeline_root"),
        components=components,
        enable_cache=config.enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args if beam_pipeline_args is not None else config.beam_args)
