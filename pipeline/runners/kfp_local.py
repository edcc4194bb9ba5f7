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


class Containers:
    """Starts tasks' and workers' containers with podman or docker.

    podman runs each container on the image's own root directory
    (`podman image mount`) under a throw-away overlay (`--rootfs DIR:O`)
    instead of copying the image for each container, which on the vfs
    storage these machines need is a full copy of the ~4 GB image. The
    container sees the same files and the image's configured environment,
    as a kubelet's container would; what it writes goes to the overlay and is
    dropped with it."""

    def __init__(self, engine: str, env: Dict[str, str]):
        exe = shutil.which(engine)
        if not exe:
            raise LocalRunError(f"--engine {engine}: {engine} is not installed here")
        self.engine, self.env = engine, env
        self.base = [exe] + (PODMAN_FLAGS if engine == "podman" else [])
        self.rootfs: Dict[str, tuple] = {}
        self.networks: List[str] = []

    def _call(self, *args: str) -> str:
        done = subprocess.run(self.base + list(args), env=self.env, capture_output=True, text=True)
        if done.returncode:
            raise LocalRunError(f"{self.engine} {' '.join(args)}: {done.stderr.strip()[-300:]}")
        return done.stdout

    def _image(self, image: str):
        """(options, target): the run arguments that name the image; for podman
        the options carry the image's environment."""
        if self.engine != "podman":
            return [], image
        if image not in self.rootfs:
            if subprocess.call(self.base + ["image", "exists", image], env=self.env):
                raise LocalRunError(f"image {image} is not in podman's storage: make image IMAGE={image}")
            config = json.loads(self._call("image", "inspect", "--format", "{{json .Config}}", image))
            self.rootfs[image] = (self._call("image", "mount", image).strip(), config.get("Env") or [])
        path, image_env = self.rootfs[image]
        return [a for e in image_env for a in ("-e", e)] + ["--rootfs"], path + ":O"

    def command(self, image: str, command: List[str], mounts: List[str], workdir: str,
                env: Dict[str, str], name: str, network: str = "none",
                extra: List[str] = ()) -> List[str]:
        # As the caller's uid, so that what tasks write into the mounted folders
        # stays the caller's (KFP's pods write to object storage instead).
        argv = self.base + ["run", "--rm", "--name", name, "--network", network, "-w", workdir,
                            "--user", f"{os.getuid()}:{os.getgid()}"] + list(extra)
        for path in mounts:
            argv += ["-v", f"{path}:{path}"]
        options, target = self._image(image)  # the image's environment first: the task's wins
        env_args = [a for k, v in sorted(env.items()) for a in ("-e", f"{k}={v}")]
        return argv + options + env_args + [target] + command

    def network(self, name: str) -> str:
        """A bridge network whose containers find each other by name and alias (DNS)."""
        self._call("network", "create", name)
        self.networks.append(name)
        return name

    def close(self) -> None:
        for image in self.rootfs:
            subprocess.call(self.base + ["image", "unmount", image], env=self.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for name in self.networks:
            subprocess.call(self.base + ["network", "rm", "-f", name], env=self.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.rootfs, self.networks = {}, []


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
    containers = Containers(engine, env) if engine != "process" else None
    tasks = spec["root"]["dag"]["tasks"]
    operator = None
    try:
        if TFJOB_EXECUTOR in json.dumps(spec["deploymentSpec"]):
            # the workers see what the tasks see: the root, the data, a weights file
            mounts = local_paths([root] + [json.dumps(v) if not isinstance(v, str) else v
                                           for v in values.values()])
            operator = _operator(containers, os.path.join(run_dir, "tfjob"), env, mounts, run_name)
            env["KUBECONFIG"] = operator.serve()
        return _run_tasks(spec, tasks, values, root, run_dir, run_name, cache_dir, engine, env,
                          operator, echo, containers)
    finally:
        if operator:
            operator.close()
        if containers:
            containers.close()


def _operator(containers: "Containers", log_dir: str, env: Dict[str, str], mounts: List[str],
              run_name: str):
    """The local Training Operator; its workers run like the tasks do.

    In containers, each worker pod is a container with its own network
    namespace on a bridge network, named after the pod and reachable under its
    service's DNS name on the TFJob port, so the workers use the TF_CONFIG the
    Training Operator writes (<job>-worker-<i>.<namespace>.svc:2222) unchanged."""
    from tfx_transfer.pipeline.runners import tfjob_local

    os.makedirs(log_dir, exist_ok=True)
    if containers is None:
        def start_process(pod, pod_env, log_path):
            c = pod["container"]
            argv = c["command"] + c.get("args", [])
            # HOME is an emptyDir volume in the pod: a fresh folder here.
            home = os.path.join(log_dir, pod["name"] + "-home")
            os.makedirs(home, exist_ok=True)
            argv = [sys.executable] + argv[1:] if argv[0] in ("python", "python3") else argv
            full = {**env, **pod_env, "HOME": home}
            return subprocess.Popen(argv, stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
                                    env=full, cwd=home)

        return tfjob_local.Operator(start_process, log_dir)

    network = containers.network(("tfx-transfer-" + run_name)[-60:])

    def start_container(pod, pod_env, log_path):
        c, volumes = pod["container"], {v["name"]: v for v in pod["spec"].get("volumes", [])}
        argv = c["command"] + c.get("args", [])
        extra = ["--hostname", pod["name"], "--network-alias", tfjob_local.service_host(pod)]
        security = c.get("securityContext", {})
        if security.get("readOnlyRootFilesystem"):
            extra += ["--read-only"] + (["--read-only-tmpfs=false"]
                                        if containers.engine == "podman" else [])
        for cap in security.get("capabilities", {}).get("drop", []):
            extra += ["--cap-drop", cap.lower()]
        if security.get("allowPrivilegeEscalation") is False:
            extra += ["--security-opt", "no-new-privileges"]
        for m in c.get("volumeMounts", []):
            if "emptyDir" not in volumes.get(m["name"], {}):
                raise LocalRunError(f"TFJob {pod['name']}: volume {m['name']} is not an emptyDir, "
                                    "which is all the local Training Operator provides")
            folder = os.path.join(log_dir, pod["name"], m["name"])  # a fresh emptyDir
            os.makedirs(folder, exist_ok=True)
            extra += ["-v", f"{folder}:{m['mountPath']}"]
        argv = containers.command(c["image"], argv, local_paths(mounts + argv), "/tmp", pod_env,
                                  pod["name"], network=network, extra=extra)
        return subprocess.Popen(argv, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env=env)

    return tfjob_local.Operator(start_container, log_dir, addresses=tfjob_local.service_addresses)


def _run_tasks(spec, tasks, values, root, run_dir, run_name, cache_dir, engine, env, operator,
               echo, containers) -> Dict[str, Any]:
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
            argv = containers.command(container["image"], argv, mounts, task_root, task_env,
                                      f"{run_name}-{task_name}".lower()[-60:],
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
