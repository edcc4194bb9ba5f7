"""Run a compiled PipelineJob on this machine the way the KFP v2 backend does.

    tfx-transfer submit --local pipeline.json [--engine process|podman|docker] \\
        [--param NAME=VALUE ...]

What it does is only what the KFP v2 driver and launcher do for a container
task, so that a pass here predicts a pass on a cluster:

* tasks in DAG order (dependentTasks), one at a time;
* each task's command and args exactly as the deploymentSpec has them, with
  the ExecutorInput built from the task's inputs (constants, pipeline
  parameters, upstream output artifacts with the metadata their executor
  reported) and KFP's placeholders resolved;
* output artifact URIs under the pipeline root, one folder per run and task;
* the executor's ExecutorOutput (outputs.outputFile) read back: its artifacts
  and their metadata are what downstream tasks receive;
* a task whose cachingOptions.enableCache is set and whose cache key (the
  component's spec, the image, the command and its resolved inputs) matches an
  earlier successful execution is not run again; its outputs are reused, as
  KFP's cache does.

What it does not do: the `lifecycle.preCacheCheck` hook TFX adds to
ExampleGen (only Vertex AI runs it; the open-source backend ignores it, and so
does this), scheduling, object storage, retries, pod specs (resources, node
selectors). Taken from kfp 2.5's local runner (kfp.local): the output
artifact list and task root layout (executor_input_utils.make_artifact_list,
construct_local_task_root), the int-typing of parameters
(executor_input_to_dict) and the placeholder resolution
(placeholder_utils.replace_placeholders). Not taken: its
construct_executor_input, which refuses input artifacts, and its task
handlers, which run one Python component function rather than a DAG.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any, Dict, List

ENGINES = ("process", "podman", "docker")
LOG_FILE = "task.log"
CACHE_DIR = ".kfp-local-cache"
TFJOB_EXECUTOR = "tfx_transfer.components.tfjob_trainer.Executor"  # under the pipeline root: one file per cache key
# The settings that make rootful podman run containers on the development
# machines (see docs/kubeflow.md); harmless elsewhere.
PODMAN_FLAGS = ["--storage-driver", "vfs", "--runtime", "runc"]
PODMAN_CONF = "[containers]\ndefault_ulimits = []\n"


class LocalRunError(RuntimeError):
    """A task failed or the run could not start; the message names the task and log."""


def topological(tasks: Dict[str, Dict]) -> List[str]:
    order: List[str] = []
    pending = dict(tasks)
    while pending:
        ready = sorted(n for n, t in pending.items()
                       if all(d in order for d in t.get("dependentTasks", [])))
        if not ready:
            raise LocalRunError(f"the DAG has a cycle or an unknown dependency among "
                                f"{', '.join(sorted(pending))}")
        order += ready
        for n in ready:
            del pending[n]
    return order


def _pipeline_values(spec: Dict, runtime: Dict, values: Dict[str, Any]) -> Dict[str, Any]:
    from tfx_transfer.pipeline.runners.kubeflow import declared_parameters, parameter_default

    out = {name: parameter_default(d) for name, d in declared_parameters(spec).items()}
    out.update(runtime.get("parameterValues") or {})
    out.update(values)
    missing = [n for n, v in out.items() if v is None]
    if missing:
        raise LocalRunError(f"no value for pipeline parameter(s) {', '.join(missing)}: "
                            "pass --param NAME=VALUE")
    return out


def _input_parameters(task: Dict, pipeline_values: Dict, outputs: Dict) -> Dict[str, Any]:
    params = {}
    for name, source in (task.get("inputs", {}).get("parameters") or {}).items():
        if "runtimeValue" in source:
            params[name] = source["runtimeValue"]["constant"]
        elif "componentInputParameter" in source:
            params[name] = pipeline_values[source["componentInputParameter"]]
        elif "taskOutputParameter" in source:
            ref = source["taskOutputParameter"]
            params[name] = outputs[ref["producerTask"]]["parameters"][ref["outputParameterKey"]]
        else:
            raise LocalRunError(f"task input parameter {name}: source {sorted(source)} is not "
                                "supported by the local launcher")
    return params


def _input_artifacts(task: Dict, outputs: Dict) -> Dict[str, Dict]:
    artifacts = {}
    for name, source in (task.get("inputs", {}).get("artifacts") or {}).items():
        if "taskOutputArtifact" not in source:
            raise LocalRunError(f"task input artifact {name}: source {sorted(source)} is not "
                                "supported by the local launcher")
        ref = source["taskOutputArtifact"]
        artifacts[name] = outputs[ref["producerTask"]]["artifacts"][ref["outputArtifactKey"]]
    return artifacts


def executor_input(component: Dict, params: Dict[str, Any], artifacts: Dict[str, Dict],
                   task_root: str) -> Dict[str, Any]:
    """The ExecutorInput of one task as a dict (what `{{$}}` becomes)."""
    from google.protobuf import json_format
    from kfp.compiler import pipeline_spec_builder
    from kfp.local import executor_input_utils
    from kfp.pipeline_spec import pipeline_spec_pb2 as pb

    comp = json_format.ParseDict(component, pb.ComponentSpec(), ignore_unknown_fields=True)
    message = pb.ExecutorInput()
    for name, value in params.items():
        message.inputs.parameter_values[name].CopyFrom(pipeline_spec_builder.to_protobuf_value(value))
    for name, artifact in artifacts.items():
        json_format.ParseDict({"artifacts": [artifact]}, message.inputs.artifacts[name])
    for name, out in comp.output_definitions.artifacts.items():
        message.outputs.artifacts[name].CopyFrom(
            executor_input_utils.make_artifact_list(name, out.artifact_type, task_root))
    for name in comp.output_definitions.parameters:
        message.outputs.parameters[name].output_file = os.path.join(task_root, name)
    message.outputs.output_file = os.path.join(task_root, "executor_output.json")
    return executor_input_utils.executor_input_to_dict(message, comp)


def _outputs_of(executor_in: Dict, executor_out: Dict) -> Dict[str, Dict]:
    """What downstream tasks receive: the executor's reported artifacts where it
    reported them (uri and metadata), else the ones it was given."""
    arts = {k: v["artifacts"][0] for k, v in executor_in["outputs"].get("artifacts", {}).items()}
    for k, v in (executor_out.get("artifacts") or {}).items():
        if v.get("artifacts"):
            reported = dict(arts.get(k, {}))
            reported.update(v["artifacts"][0])
            arts[k] = reported
    return {"artifacts": arts, "parameters": dict(executor_out.get("parameterValues") or {})}


def local_paths(strings: List[str]) -> List[str]:
    """Existing absolute paths named anywhere in strings (JSON inside them
    included): what a container must see at the same path."""
    found = set()

    def visit(value):
        if isinstance(value, dict):
            for v in value.values():
                visit(v)
        elif isinstance(value, list):
            for v in value:
                visit(v)
        elif isinstance(value, str):
            text = value.strip()
            if text[:1] in "[{":
                try:
                    return visit(json.loads(text))
                except ValueError:
                    pass
            if text.startswith("/") and "\n" not in text:
                path = text
                while path != "/" and not os.path.exists(path):
                    path = os.path.dirname(path)
                if path != "/" and not path.startswith(("/proc", "/sys", "/dev")):
                    found.add(path)

    for s in strings:
        visit(s)
    # a path inside another mounted one needs no mount of its own
    paths = sorted(found)
    return [p for p in paths if not any(p.startswith(q.rstrip("/") + "/") for q in paths if q != p)]


def container_command(engine: str, image: str, command: List[str], mounts: List[str],
                      workdir: str, env: Dict[str, str], name: str,
                      network: str = "none") -> List[str]:
    exe = shutil.which(engine)
    if not exe:
        raise LocalRunError(f"--engine {engine}: {engine} is not installed here")
    # As the caller's uid, so that what tasks write into the mounted folders
    # stays the caller's (KFP's pods write to object storage instead).
    argv = [exe] + (PODMAN_FLAGS if engine == "podman" else []) + [
        "run", "--rm", "--name", name, "--network", network, "-w", workdir,
        "--user", f"{os.getuid()}:{os.getgid()}"]
    for path in mounts:
        argv += ["-v", f"{path}:{path}"]
    for k, v in sorted(env.items()):
        argv += ["-e", f"{k}={v}"]
    return argv + [image] + command


def _engine_env(engine: str) -> Dict[str, str]:
    env = dict(os.environ)
    if engine == "podman" and "CONTAINERS_CONF" not in env:
        conf = os.path.join(os.path.expanduser("~"), ".config", "tfx-transfer", "containers.conf")
        os.makedirs(os.path.dirname(conf), exist_ok=True)
        with open(conf, "w") as f:
            f.write(PODMAN_CONF)
        env["CONTAINERS_CONF"] = conf
    return env


def cache_key(executor: Dict, component: Dict, params: Dict, artifacts: Dict) -> str:
    # KFP's key: the component's spec and container, the input parameter
    # values and the input artifacts (by URI here; KFP uses their MLMD ids).
    body = json.dumps({"executor": executor, "component": component, "params": params,
                       "artifacts": {k: v.get("uri") for k, v in artifacts.items()}},
                      sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def run(package: str, params: List[str], engine: str = "process",
        echo=None) -> Dict[str, Any]:
    """Runs every task; returns {"run_dir", "tasks": {name: {state, seconds, outputs}}}."""
    from tfx_transfer.pipeline.runners.kubeflow import load_package, parameter_values

    echo = echo or (lambda line: print(line, flush=True))
    if engine not in ENGINES:
        raise LocalRunError(f"--engine {engine}: expected one of {', '.join(ENGINES)}")
    spec, runtime = load_package(package)
    root = spec.get("defaultPipelineRoot") or runtime.get("gcsOutputDirectory") or ""
    if not os.path.isabs(root):
        raise LocalRunError(f"{package}: pipeline root {root!r} is not a local absolute path; "
                            "compile with --platform local --pipeline-root /ABSOLUTE/DIR")
    values = _pipeline_values(spec, runtime, parameter_values(spec, params))
    name = spec["pipelineInfo"]["name"]
    run_name = f"{name}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S-%f')}"
    run_dir = os.path.join(root, run_name)
    cache_dir = os.path.join(root, CACHE_DIR)
    os.makedirs(cache_dir, exist_ok=True)
    env = _engine_env(engine)
    tasks = spec["root"]["dag"]["tasks"]
    operator = None
    if TFJOB_EXECUTOR in json.dumps(spec["deploymentSpec"]):
        # the workers see what the tasks see: the root, the data, a weights file
        mounts = local_paths([root] + [json.dumps(v) if not isinstance(v, str) else v
                                       for v in values.values()])
        operator = _operator(engine, os.path.join(run_dir, "tfjob"), env, mounts)
        env["KUBECONFIG"] = operator.serve()
    try:
        return _run_tasks(spec, tasks, values, root, run_dir, run_name, cache_dir, engine, env,
                          operator, echo)
    finally:
        if operator:
            operator.close()


def _operator(engine: str, log_dir: str, env: Dict[str, str], mounts: List[str]):
    """The local Training Operator; its workers run like the tasks do."""
    from tfx_transfer.pipeline.runners.tfjob_local import Operator

    os.makedirs(log_dir, exist_ok=True)

    def start(argv, pod_env, log_path, image):
        worker = os.path.splitext(os.path.basename(log_path))[0]
        if engine == "process":
            # HOME is an emptyDir volume in the pod: a fresh folder here.
            home = os.path.join(log_dir, worker + "-home")
            os.makedirs(home, exist_ok=True)
            argv = [sys.executable] + argv[1:] if argv[0] in ("python", "python3") else argv
            full = {**env, **pod_env, "HOME": home}
            return subprocess.Popen(argv, stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
                                    env=full, cwd=home)
        argv = container_command(engine, image, argv, local_paths(mounts + argv), "/tmp", pod_env,
                                 worker.lower()[-60:], network="host")
        return subprocess.Popen(argv, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env=env)

    return Operator(start, log_dir)


def _run_tasks(spec, tasks, values, root, run_dir, run_name, cache_dir, engine, env, operator,
               echo) -> Dict[str, Any]:
    from kfp.local import placeholder_utils

    outputs: Dict[str, Dict] = {}
    report: Dict[str, Dict] = {}
    echo(f"run {run_name}: {len(tasks)} tasks, engine {engine}, root {root}")
    for task_name in topological(tasks):
        task = tasks[task_name]
        comp_name = task["componentRef"]["name"]
        component = spec["components"][comp_name]
        executor = spec["deploymentSpec"]["executors"][component["executorLabel"]]
        container = executor.get("container")
        if not container:
            raise LocalRunError(f"task {task_name}: executor {component['executorLabel']} is not a "
                                "container (importer/resolver tasks are not run locally)")
        p = _input_parameters(task, values, outputs)
        a = _input_artifacts(task, outputs)
        key = cache_key(executor, component, p, a)
        cached = os.path.join(cache_dir, key + ".json")
        if task.get("cachingOptions", {}).get("enableCache") and os.path.exists(cached):
            with open(cached) as f:
                outputs[task_name] = json.load(f)
            report[task_name] = {"state": "CACHED", "seconds": 0.0, "outputs": outputs[task_name]}
            echo(f"  {task_name:<20} CACHED    {0.0:7.1f}s")
            continue
        task_root = os.path.join(run_dir, task_name)
        os.makedirs(task_root, exist_ok=True)
        ex_in = executor_input(component, p, a, task_root)
        argv = placeholder_utils.replace_placeholders(
            list(container.get("command", [])) + list(container.get("args", [])),
            ex_in, run_name, task_name, root)
        log_path = os.path.join(task_root, LOG_FILE)
        if engine == "process":
            if argv and argv[0] in ("python", "python3"):
                argv[0] = sys.executable  # the image's python is this environment's here
            workdir = task_root
        else:
            mounts = local_paths(argv + [root])
            task_env = {"PYTHONUNBUFFERED": "1"}
            if operator:  # the Trainer reaches the local Kubernetes API on 127.0.0.1
                task_env["KUBECONFIG"] = env["KUBECONFIG"]
            argv = container_command(engine, container["image"], argv, mounts, task_root,
                                     task_env, f"{run_name}-{task_name}".lower()[-60:],
                                     network="host" if operator else "none")
            workdir = None
        start = time.time()
        with open(log_path, "w") as log:
            rc = subprocess.call(argv, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env)
        seconds = time.time() - start
        out_file = ex_in["outputs"]["outputFile"]
        if rc != 0 or not os.path.exists(out_file):
            why = f"exit code {rc}" if rc else "no executor output written"
            echo(f"  {task_name:<20} FAILED    {seconds:7.1f}s")
            raise LocalRunError(f"task {task_name} failed ({why}); log: {log_path}")
        with open(out_file) as f:
            outputs[task_name] = _outputs_of(ex_in, json.load(f))
        with open(cached + ".tmp", "w") as f:
            json.dump(outputs[task_name], f)
        os.replace(cached + ".tmp", cached)
        report[task_name] = {"state": "SUCCEEDED", "seconds": round(seconds, 2),
                             "outputs": outputs[task_name]}
        echo(f"  {task_name:<20} SUCCEEDED {seconds:7.1f}s")
    return {"run_dir": run_dir, "tasks": report}
