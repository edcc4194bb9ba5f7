"""Kubeflow Pipelines: compile the pipeline of create_pipeline(config) with TFX's
KubeflowV2DagRunner, and submit the compiled file with the kfp client
(commands in pipeline/cli/kubeflow.py).

    tfx-transfer compile [--config FILE] [run flags] --output pipeline.json \\
        --image IMAGE --pipeline-root gs://BUCKET/root [--platform kubeflow|vertex]
    tfx-transfer submit --host URL [--namespace NS] [--experiment NAME] pipeline.json \\
        [--param k=v ...]

Runtime parameters. KubeflowV2 substitutes a RuntimeParameter only where it is
a whole exec property, not a value inside one, so the spec has two:

  data_root       ImageExampleGen's input_base
  trainer_config  custom_config (JSON) of both the Transform and the Trainer:
                  the model and training sections of the run config (and
                  the TFJob settings). One parameter for both keeps the
                  preprocessing and the model in step.

`submit --param backbone=ResNet50 --param epochs=3` edits fields of
trainer_config (checked like a run config) so nobody has to write the JSON.
What stays fixed at compile time: the split layout, eval_config, the Pusher's
destination, the projector settings, the Beam arguments and the image.
"""
from __future__ import annotations

import json
import os
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
    from tfx_transfer.pipeline.config import ConfigError

    raise ConfigError(f"{field}: {message}")


def check_pipeline_root(root: Optional[str], platform: str) -> str:
    schemes = ROOT_SCHEMES[platform]
    if not root or not root.startswith(schemes):
        _fail("--pipeline-root", f"{root!r}: {platform} keeps pipeline artefacts only under "
                                 f"{', '.join(schemes)}; a local or PVC path is not accepted there")
    return root.rstrip("/")


def build(config, pipeline_root: str, platform: str = "kubeflow"):
    """The pipeline of create_pipeline(config), with its runtime parameters as inputs."""
    from tfx.orchestration.data_types import RuntimeParameter

    from tfx_transfer.pipeline.pipeline import RuntimeInputs, create_pipeline, trainer_custom_config
    from tfx_transfer.pipeline.runners import local

    changes: Dict[str, Any] = {}
    if platform in ("kubeflow", "local"):
        # The KFP backend refuses Resolver tasks ("resolver executors not
        # implemented", backend/src/v2/compiler/argocompiler/dag.go).
        changes["baseline"] = False
    if not config.deploy.serving_dir:
        changes["serving_dir"] = f"{pipeline_root}/serving"
    config = config.replace(**changes)
    runtime = RuntimeInputs(
        data_root=RuntimeParameter(
            name=PARAM_DATA, ptype=str, default=config.data.data),
        module_config=RuntimeParameter(
            name=PARAM_CONFIG, ptype=str,
            default=json.dumps(trainer_custom_config(config), sort_keys=True)))
    return create_pipeline(config, pipeline_root=pipeline_root,
                           beam_pipeline_args=local.beam_args(config), runtime=runtime)


def compile_pipeline(config, output: str, image: Optional[str] = None,
                     pipeline_root: Optional[str] = None, platform: str = "kubeflow") -> Dict:
    """Writes the KFP PipelineJob JSON (the PipelineSpec alone for .yaml); returns the job."""
    from tfx.orchestration.data_types import RuntimeParameter
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

    image = image or config.deploy.image
    if not image:
        _fail("--image", "the container image with this project (see Dockerfile) is required")
    root = check_pipeline_root(pipeline_root, platform)
    # Tasks run in other working directories (a pod, a container): a local
    # path the spec names must not depend on where compile ran.
    local = {k: os.path.abspath(v) for k, v in (("data", config.data.data),
                                                ("weights", config.model.weights),
                                                ("serving_dir", config.deploy.serving_dir))
             if v and os.path.exists(v)}
    pipeline = build(config.replace(image=image, **local), root, platform)
    runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
        config=kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(
            default_image=image,
            default_commands=list(kubeflow_v2_dag_runner.KUBEFLOW_TFX_CMD),
            # Schema 2.1 (parameterType, parameterValues) is what KFP 2.x reads.
            use_pipeline_spec_2_1=True))
    defaults = {p.name: p.default for c in pipeline.components
                for p in c.exec_properties.values()
                if isinstance(p, RuntimeParameter)}
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


def declared_parameters(spec: Dict) -> Dict[str, Dict]:
    return (spec.get("root", {}).get("inputDefinitions", {}) or {}).get("parameters", {}) or {}


def parameter_default(definition: Dict):
    value = definition.get("defaultValue")
    return value.get("stringValue") if isinstance(value, dict) else value


def parameter_values(spec: Dict, params: List[str]) -> Dict[str, Any]:
    """--param k=v pairs -> the run's parameter values, checked against the spec.

    k is a runtime parameter of the spec, or a field of trainer_config
    (tfjob.FIELD for the TFJob settings); values of fields are YAML scalars."""
    import yaml

    from tfx_transfer.modules.config import ModuleConfig
    from tfx_transfer.pipeline.config import ConfigError

    declared = declared_parameters(spec)
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
    cfg = json.loads(values.get(PARAM_CONFIG) or parameter_default(declared[PARAM_CONFIG]) or "{}")
    # A field is named alone (epochs) or with its section (training.epochs,
    # tfjob.workers); it must exist in the compiled config.
    where = {name: section for section, fields in cfg.items() if isinstance(fields, dict)
             for name in fields}
    for key, value in fields.items():
        head, _, sub = key.partition(".")
        section = head if sub else where.get(key)
        name = sub or key
        if section not in cfg or not isinstance(cfg[section], dict) or name not in cfg[section]:
            known = sorted(declared) + sorted(f"{s}.{n}" for s, fs in cfg.items()
                                              if isinstance(fs, dict) for n in fs)
            raise ConfigError(f"--param {key}: unknown parameter; the pipeline takes "
                              f"{', '.join(known)}")
        cfg[section][name] = value
    ModuleConfig.from_custom_config(cfg)  # names the field when a value is wrong
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
