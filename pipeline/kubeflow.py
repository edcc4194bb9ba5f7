"""Kubeflow Pipelines: compile the pipeline of create_pipeline(config) with TFX's
KubeflowV2DagRunner, and submit the compiled file with the kfp client.

    tfx-transfer compile [--config FILE] [run flags] --output pipeline.json \\
        --image IMAGE --pipeline-root gs://BUCKET/root [--platform kubeflow|vertex]
    tfx-transfer submit --host URL [--namespace NS] [--experiment NAME] pipeline.json \\
        [--param k=v ...]

Runtime parameters. KubeflowV2 substitutes a RuntimeParameter only where it is
a whole exec property, not a value inside one, so the spec has two:

  data_root       ImageExampleGen's input_base
  trainer_config  custom_config (JSON) of both the Transform and the Trainer:
                  backbone, image_size, mode, epochs, ... One parameter for
                  both keeps the preprocessing and the model in step.

`submit --param backbone=ResNet50 --param epochs=3` edits fields of
trainer_config (checked like a run config) so nobody has to write the JSON.
What stays fixed at compile time: the split layout, eval_config, the Pusher's
destination, the projector settings, the Beam arguments and the image.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Any, Dict, List, Optional, Tuple

PARAM_DATA = "data_root"
PARAM_CONFIG = "trainer_config"
PLATFORMS = ("kubeflow", "vertex", "local")
# Where the KFP backend can keep artefacts (backend/src/v2/objectstore/config.go
# rejects anything else); Vertex AI Pipelines takes gs:// only.
ROOT_SCHEMES = {"kubeflow": ("gs://", "s3://", "minio://"), "vertex": ("gs://",),
                # the KFP spec of "kubeflow", for `submit --local` (pipeline/kfp_local.py)
                "local": ("/",)}


class SubmitError(RuntimeError):
    """The run could not be created; the message says why."""


def _fail(field, message):
    from pipeline.config import ConfigError

    raise ConfigError(f"{field}: {message}")


def check_pipeline_root(root: Optional[str], platform: str) -> str:
    schemes = ROOT_SCHEMES[platform]
    if not root or not root.startswith(schemes):
        _fail("--pipeline-root", f"{root!r}: {platform} keeps pipeline artefacts only under "
                                 f"{', '.join(schemes)}; a local or PVC path is not accepted there")
    return root.rstrip("/")


def build(config, pipeline_root: str, platform: str = "kubeflow"):
    """The pipeline of create_pipeline(config), with its runtime parameters in place."""
    from tfx import v1 as tfx
    from tfx.components.example_gen.component import FileBasedExampleGen

    from pipeline import runners
    from pipeline.pipeline import create_pipeline

    changes: Dict[str, Any] = {}
    if platform in ("kubeflow", "local"):
        # The KFP backend refuses Resolver tasks ("resolver executors not
        # implemented", backend/src/v2/compiler/argocompiler/dag.go).
        changes["baseline"] = False
    if not config.serving_dir:
        changes["serving_dir"] = f"{pipeline_root}/serving"
    config = config.replace(**changes)
    pipeline = create_pipeline(config, pipeline_root=pipeline_root,
                               beam_pipeline_args=runners.beam_args(config))
    data = tfx.dsl.experimental.RuntimeParameter(name=PARAM_DATA, ptype=str, default=config.data)
    trainer = next(c for c in pipeline.components if isinstance(c, tfx.components.Trainer))
    trainer_config = tfx.dsl.experimental.RuntimeParameter(
        name=PARAM_CONFIG, ptype=str, default=trainer.exec_properties["custom_config"])
    for component in pipeline.components:
        # Components validate their arguments when built; the parameters go in
        # afterwards, as whole exec properties, which is what KubeflowV2 reads.
        if isinstance(component, FileBasedExampleGen):
            component.exec_properties["input_base"] = data
        elif isinstance(component, (tfx.components.Transform, tfx.components.Trainer)):
            component.exec_properties["custom_config"] = trainer_config
    return pipeline


def compile_pipeline(config, output: str, image: Optional[str] = None,
                     pipeline_root: Optional[str] = None, platform: str = "kubeflow") -> Dict:
    """Writes the KFP PipelineJob JSON (the PipelineSpec alone for .yaml); returns the job."""
    from tfx import v1 as tfx
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

    image = image or config.image
    if not image:
        _fail("--image", "the container image with this project (see Dockerfile) is required")
    root = check_pipeline_root(pipeline_root, platform)
    # Tasks run in other working directories (a pod, a container): a local
    # path the spec names must not depend on where compile ran.
    local = {k: os.path.abspath(v) for k, v in (("data", config.data), ("weights", config.weights),
                                                ("serving_dir", config.serving_dir))
             if v and os.path.exists(v)}
    pipeline = build(config.replace(image=image, **local), root, platform)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            default_image=image,
            default_commands=list(kubeflow_v2_dag_runner.KUBEFLOW_TFX_CMD),
            # Schema 2.1 (parameterType, parameterValues) is what KFP 2.x reads.
            use_pipeline_spec_2_1=True))
    defaults = {p.name: p.default for c in pipeline.components
                for p in c.exec_properties.values()
                if isinstance(p, tfx.dsl.experimental.RuntimeParameter)}
    job = runner.run(pipeline, parameter_values=defaults, write_out=False)
    # TFX puts the defaults in the PipelineJob's runtimeConfig only; a spec
    # submitted on its own (kfp reads just the PipelineSpec) needs them inside.
    spec = job["pipelineSpec"]
    for name, value in defaults.items():
        spec["root"]["inputDefinitions"]["parameters"][name].update(
            defaultValue=value, isOptional=True)
    spec["defaultPipelineRoot"] = root
    with open(output, "w") as f:
        if output.endswith((".yaml", ".yml")):
            import yaml

            yaml.safe_dump(spec, f, sort_keys=True)
        else:
            json.dump(job, f, indent=1, sort_keys=True)
    return job


# --------------------------------------------------------------------------
def load_package(path: str) -> Tuple[Dict, Dict]:
    """(pipelineSpec, runtimeConfig) of a compiled file: TFX's PipelineJob JSON or a spec YAML."""
    import yaml

    try:
        with open(path) as f:
            doc = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise SubmitError(f"cannot read {path}: {e}") from None
    if not isinstance(doc, dict):
        raise SubmitError(f"{path} is not a compiled pipeline")
    if "pipelineSpec" in doc:
        return doc["pipelineSpec"], doc.get("runtimeConfig") or {}
    if "root" in doc and "deploymentSpec" in doc:
        return doc, {}
    raise SubmitError(f"{path} holds neither a PipelineJob nor a PipelineSpec")


def _declared(spec: Dict) -> Dict[str, Dict]:
    return (spec.get("root", {}).get("inputDefinitions", {}) or {}).get("parameters", {}) or {}


def _default(definition: Dict):
    value = definition.get("defaultValue")
    return value.get("stringValue") if isinstance(value, dict) else value


def parameter_values(spec: Dict, params: List[str]) -> Dict[str, Any]:
    """--param k=v pairs -> the run's parameter values, checked against the spec.

    k is a runtime parameter of the spec, or a field of trainer_config
    (tfjob.FIELD for the TFJob settings); values of fields are YAML scalars."""
    import yaml

    from pipeline.config import ConfigError, RunConfig

    declared = _declared(spec)
    values: Dict[str, Any] = {}
    fields: Dict[str, Any] = {}
    for item in params:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param {item!r}: expected NAME=VALUE")
        if key in declared:
            values[key] = value
        else:
            fields[key] = yaml.safe_load(value) if value else ""
    if not fields:
        return values
    if PARAM_CONFIG not in declared:
        raise ConfigError(f"--param {', '.join(fields)}: the pipeline has no {PARAM_CONFIG} "
                          f"parameter; it has {', '.join(sorted(declared)) or 'none'}")
    cfg = json.loads(values.get(PARAM_CONFIG) or _default(declared[PARAM_CONFIG]) or "{}")
    for key, value in fields.items():
        head, _, sub = key.partition(".")
        target = cfg.get(head) if sub else cfg
        name = sub or key
        if not isinstance(target, dict) or name not in target:
            known = sorted(declared) + sorted(k for k in cfg if not isinstance(cfg[k], dict)) + \
                sorted(f"{k}.{s}" for k in cfg if isinstance(cfg[k], dict) for s in cfg[k])
            raise ConfigError(f"--param {key}: unknown parameter; the pipeline takes "
                              f"{', '.join(known)}")
        target[name] = value
    checked = {k: v for k, v in cfg.items() if not isinstance(v, dict)}
    if str(checked.get("weights", "none")).lower() not in ("imagenet", "none"):
        checked["weights"] = "none"  # a weights file lives in the image or on gs://, not here
    RunConfig.from_dict(checked)  # names the field when a value is wrong
    values[PARAM_CONFIG] = json.dumps(cfg, sort_keys=True)
    return values


def _check_reachable(host: str, timeout: float = 10) -> None:
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{host.rstrip('/')}/apis/v2beta1/healthz", timeout=timeout)
    except urllib.error.HTTPError:
        pass  # it answered: authentication and the like are the client's business
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise SubmitError(f"cannot reach Kubeflow Pipelines at {host}: {reason}. Check --host "
                          "(e.g. http://localhost:8080 after `kubectl port-forward -n kubeflow "
                          "svc/ml-pipeline-ui 8080:80`).") from None


def submit(host: str, package: str, params: List[str], namespace: Optional[str] = None,
           experiment: Optional[str] = None, run_name: Optional[str] = None,
           pipeline_root: Optional[str] = None, service_account: Optional[str] = None,
           token: Optional[str] = None):
    """Creates a run of the compiled pipeline; returns the kfp RunPipelineResult."""
    import kfp
    import kfp_server_api
    import urllib3
    import yaml

    spec, runtime = load_package(package)
    values = parameter_values(spec, params)
    _check_reachable(host)
    root = pipeline_root or runtime.get("gcsOutputDirectory")
    try:
        client = kfp.Client(host=host, namespace=namespace or "kubeflow", existing_token=token)
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            # kfp 2.5 reads a PipelineSpec from YAML only; TFX writes a PipelineJob.
            yaml.safe_dump(spec, f)
            f.flush()
            return client.create_run_from_pipeline_package(
                f.name, arguments=values, run_name=run_name or spec["pipelineInfo"]["name"],
                experiment_name=experiment, namespace=namespace, pipeline_root=root,
                service_account=service_account)
    except kfp_server_api.ApiException as e:
        raise SubmitError(f"Kubeflow Pipelines at {host} refused: {e.status} {e.reason}: "
                          f"{(e.body or '').strip()[:2000]}") from None
    except urllib3.exceptions.HTTPError as e:
        raise SubmitError(f"lost the connection to {host}: {e}") from None


# --------------------------------------------------------------------------
def cmd_compile(args) -> int:
    import dataclasses

    from pipeline.config import ConfigError, RunConfig

    fields = {f.name for f in dataclasses.fields(RunConfig)}
    config = RunConfig.load(args.config, **{k: v for k, v in vars(args).items() if k in fields})
    if not config.data:
        raise ConfigError("config field 'data': no data given (--data DIR or data: in --config)")
    job = compile_pipeline(config, args.package, image=args.image,
                           pipeline_root=args.pipeline_root, platform=args.platform)
    spec = job.get("pipelineSpec", job)
    tasks = sorted(spec["root"]["dag"]["tasks"])
    print(f"wrote {args.package}: {len(tasks)} tasks ({', '.join(tasks)})")
    for name, definition in sorted(_declared(spec).items()):
        print(f"  runtime parameter {name} (default {str(_default(definition))[:120]})")
    if args.platform in ("kubeflow", "local"):
        print("  no latest_blessed_model_resolver: the KFP backend cannot run Resolver tasks "
              "(compile with --platform vertex to keep it)")
    return 0


def cmd_submit(args) -> int:
    if args.local:
        from pipeline.kfp_local import cmd_submit_local

        return cmd_submit_local(args)
    if not args.host:
        print("tfx-transfer: error: submit needs --host URL (or --local)", file=sys.stderr)
        return 2
    try:
        result = submit(args.host, args.package, args.param or [], namespace=args.namespace,
                        experiment=args.experiment, run_name=args.run_name,
                        pipeline_root=args.pipeline_root, service_account=args.service_account,
                        token=args.token)
    except SubmitError as e:
        print(f"tfx-transfer: error: {e}", file=sys.stderr)
        return 2
    print(f"run {result.run_id} created")
    return 0


def register(subparsers) -> None:
    from pipeline.cli import _add_run_flags
    from pipeline.kfp_local import ENGINES

    p = subparsers.add_parser(
        "compile", conflict_handler="resolve",
        help="compile the pipeline for Kubeflow Pipelines / Vertex AI (KubeflowV2DagRunner)")
    _add_run_flags(p)
    # Replaces run's --output (a run folder): here it is the compiled file.
    p.add_argument("--output", dest="package", required=True,
                   help="compiled file: .json (PipelineJob) or .yaml (PipelineSpec)")
    p.add_argument("--image", help="container image built from this repository (Dockerfile)")
    p.add_argument("--pipeline-root", dest="pipeline_root", required=True,
                   help="artefact root, e.g. gs://BUCKET/tfx-transfer")
    p.add_argument("--platform", choices=PLATFORMS, default="kubeflow",
                   help="kubeflow: KFP 2.x backend (no Resolver); vertex: Vertex AI Pipelines; "
                        "local: the kubeflow spec with a local root, for submit --local")
    p.add_argument("--data-layout", dest="data_layout", choices=["auto", "folders", "hash"],
                   help="folders (train/ + test/) or hash; auto lists the data folder now")
    p.add_argument("--beam-arg", dest="beam_args", action="append",
                   help="Beam pipeline argument (repeat), e.g. --beam-arg=--runner=DataflowRunner")
    p.add_argument("--tfjob-workers", dest="tfjob_workers", type=int,
                   help="train on a TFJob of N workers (Kubeflow Training Operator)")
    p.add_argument("--tfjob-gpus-per-worker", dest="tfjob_gpus_per_worker", type=int)
    p.add_argument("--tfjob-service-account", dest="tfjob_service_account")
    p.add_argument("--namespace", help="namespace of the TFJobs (default kubeflow)")
    p.set_defaults(func=cmd_compile)

    p = subparsers.add_parser("submit", help="start a run of a compiled pipeline on Kubeflow")
    p.add_argument("package", help="file written by tfx-transfer compile")
    p.add_argument("--host", help="KFP API endpoint, e.g. http://localhost:8080")
    p.add_argument("--local", action="store_true",
                   help="run it here, task by task, as the KFP v2 backend would (compile with "
                        "--platform local)")
    p.add_argument("--engine", default="process", choices=ENGINES,
                   help="with --local: run each task in the image (podman, docker) or with "
                        "this environment's Python (process)")
    p.add_argument("--namespace", help="Kubeflow profile namespace (multi-user installs)")
    p.add_argument("--experiment", help="experiment name (created when missing)")
    p.add_argument("--run-name", dest="run_name")
    p.add_argument("--pipeline-root", dest="pipeline_root",
                   help="override the compiled pipeline root")
    p.add_argument("--service-account", dest="service_account",
                   help="service account of the run's pods")
    p.add_argument("--token", help="bearer token for an authenticated endpoint "
                                   "(e.g. `kubectl create token` of a profile's service account)")
    p.add_argument("--param", action="append", metavar="NAME=VALUE",
                   help="data_root, trainer_config, or a trainer_config field "
                        "(backbone, mode, epochs, image_size, ..., tfjob.workers)")
    p.set_defaults(func=cmd_submit)
