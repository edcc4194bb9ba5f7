"""A Trainer executor that trains on a Kubeflow Training Operator TFJob.

The standard Trainer component with this executor (pipeline.py sets it when
config.tfjob_workers > 0) does not train in its own pod. It writes the
executor's inputs, outputs and exec properties next to the model run
(components/tfjob_worker.py reads them back into the FnArgs the Trainer would
have built), creates a TFJob of N workers running `python -m
tfx_transfer.components.tfjob_worker` in the pipeline's image, follows the job's status until
it finishes, and fails with the job's reason (and the chief's last log lines)
when it fails. The Training Operator sets TF_CONFIG in each worker, so
run_fn trains under MultiWorkerMirroredStrategy and worker 0 writes the model.

The pipeline root must be storage every worker reaches (gs://): the workers
read the examples and the transform graph and write the model there.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import threading
import time
from typing import Any, Callable, Dict, Optional

from tfx.components.trainer.executor import GenericExecutor
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import json_utils, path_utils

from tfx_transfer.modules.contract import TFJOB_CONFIG_KEY as CONFIG_KEY

log = logging.getLogger("tfx_transfer.tfjob")

GROUP, VERSION, PLURAL, KIND = "kubeflow.org", "v1", "tfjobs", "TFJob"
# The Training Operator finds the TensorFlow container of a replica by this name.
CONTAINER_NAME = "tensorflow"
WORKER_COMMAND = ["python", "-m", "tfx_transfer.components.tfjob_worker"]
# The image's unprivileged user (Dockerfile); its home and /tmp are the only writable paths.
RUN_AS_UID, HOME = 1000, "/home/tfx"
# Small: config, logs, Keras caches. /tmp holds checkpoints and is sized by the config.
HOME_SIZE_LIMIT = "1Gi"


class TFJobFailed(RuntimeError):
    """The TFJob ended in the Failed state; the message carries its reason."""


def settings(config) -> Dict[str, Any]:
    """The TFJob part of a RunConfig, as the executor reads it from custom_config."""
    d = config.deploy
    return {"workers": d.tfjob_workers, "gpus_per_worker": d.tfjob_gpus_per_worker,
            "image": d.image, "namespace": d.namespace, "service_account": d.tfjob_service_account,
            "cpu": d.tfjob_cpu, "memory": d.tfjob_memory, "tmp_size": d.tfjob_tmp_size}


def job_name(model_run_uri: str) -> str:
    # One name per Trainer execution: a retried executor finds its job again
    # instead of starting a second one. Short enough for pod and service names.
    return "tfx-trainer-" + hashlib.sha1(model_run_uri.encode()).hexdigest()[:12]


def tfjob_spec(name: str, namespace: str, image: str, workers: int, gpus_per_worker: int,
               fn_args_uri: str, service_account: str = "", backoff_limit: int = 3,
               cpu: str = "4", memory: str = "16Gi", tmp_size: str = "20Gi") -> Dict:
    container: Dict[str, Any] = {
        "name": CONTAINER_NAME, "image": image,
        "command": WORKER_COMMAND, "args": ["--fn-args", fn_args_uri],
        "env": [{"name": "HOME", "value": HOME}],
        "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS_UID,
                            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, {"name": "home", "mountPath": HOME}]}
    # Requests equal to limits: the scheduler places a worker only where it
    # fits, and a worker cannot starve its node's neighbours.
    amounts = {"cpu": cpu, "memory": memory}
    if gpus_per_worker:
        amounts["nvidia.com/gpu"] = gpus_per_worker
    container["resources"] = {"requests": dict(amounts), "limits": dict(amounts)}
    pod_spec: Dict[str, Any] = {
        "containers": [container],
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": tmp_size}},
                    {"name": "home", "emptyDir": {"sizeLimit": HOME_SIZE_LIMIT}}]}
    if service_account:
        pod_spec["serviceAccountName"] = service_account
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"app.kubernetes.io/part-of": "tfx-transfer"}},
        "spec": {
            # OnFailure: a worker that dies (or fails because a peer died) is
            # restarted and resumes from the BackupAndRestore checkpoint; more
            # than backoff_limit restarts fail the job.
            "runPolicy": {"backoffLimit": backoff_limit, "cleanPodPolicy": "Running",
                          "ttlSecondsAfterFinished": 7 * 24 * 3600},
            "tfReplicaSpecs": {"Worker": {
                "replicas": workers,
                "restartPolicy": "OnFailure",
                # Istio sidecars keep a finished worker pod running forever.
                "template": {"metadata": {"annotations": {"sidecar.istio.io/inject": "false"}},
                             "spec": pod_spec}}},
        },
    }


def _finished(status: Dict) -> Optional[Dict]:
    """The Succeeded or Failed condition when the job has ended."""
    for condition in reversed(status.get("conditions") or []):
        if condition.get("type") in ("Succeeded", "Failed") and condition.get("status") == "True":
            return condition
    return None


def run_tfjob(api, body: Dict, poll_seconds: float = 15, logs: Optional[Callable[[], str]] = None,
              max_api_errors: int = 10) -> Dict:
    """Creates the TFJob (or follows the one of that name), logs each status change,
    returns the finished job or raises TFJobFailed with the job's reason."""
    from kubernetes.client.rest import ApiException

    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    where = f"TFJob {namespace}/{name}"
    for attempt in range(max_api_errors):
        try:
            api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
            log.info("%s created: %d worker(s) of %s", where,
                     body["spec"]["tfReplicaSpecs"]["Worker"]["replicas"],
                     body["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
                     ["image"])
            break
        except ApiException as e:
            if e.status != 409:
                raise RuntimeError(f"cannot create {where}: {e.status} {e.reason}: {e.body}") from e
        # The Trainer was retried: follow its job, unless that one failed
        # (retrying is the point then), or it is still being deleted.
        existing = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        before = _finished(existing.get("status") or {})
        if existing.get("metadata", {}).get("deletionTimestamp"):
            time.sleep(poll_seconds)
        elif before and before["type"] == "Failed":
            log.info("%s failed in an earlier attempt (%s): starting it again", where,
                     before.get("reason", ""))
            api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        else:
            log.info("%s exists already (the Trainer was retried): following it", where)
            break
    else:
        raise RuntimeError(f"cannot create {where}: a job of that name is in the way")
    seen, replicas, errors = set(), None, 0
    while True:
        try:
            job = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            errors = 0
        except ApiException as e:
            # The API server restarting, a network blip: the job runs on regardless.
            errors += 1
            if e.status == 404 or errors > max_api_errors:
                raise RuntimeError(f"lost track of {where}: {e.status} {e.reason}") from e
            log.warning("reading %s failed (%s %s); retrying", where, e.status, e.reason)
            time.sleep(poll_seconds)
            continue
        status = job.get("status") or {}
        for c in status.get("conditions") or []:
            key = (c.get("type"), c.get("status"), c.get("reason"), c.get("lastTransitionTime"))
            if key not in seen:
                seen.add(key)
                log.info("%s: %s=%s %s: %s", where, c.get("type"), c.get("status"),
                         c.get("reason", ""), c.get("message", ""))
        workers = (status.get("replicaStatuses") or {}).get("Worker")
        if workers and workers != replicas:
            replicas = workers
            log.info("%s workers: %s", where, json.dumps(workers, sort_keys=True))
        done = _finished(status)
        if done and done["type"] == "Succeeded":
            return job
        if done:
            tail = ""
            if logs:
                try:
                    tail = "\nlast lines of the chief (worker 0):\n" + logs()
                except Exception as e:  # noqa: BLE001 -- the reason matters more than the logs
                    tail = f"\n(chief logs unavailable: {e})"
            raise TFJobFailed(f"{where} failed: {done.get('reason', '')}: "
                              f"{done.get('message', '')}{tail}")
        time.sleep(poll_seconds)


def _kubernetes():
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi(), client.CoreV1Api()


class Executor(GenericExecutor):
    """GenericExecutor's inputs and run_fn, run by TFJob workers instead of this process."""

    poll_seconds = 15

    def Do(self, input_dict, output_dict, exec_properties: Dict[str, Any]) -> None:
        from tfx_transfer.components import tfjob_worker

        self._log_startup(input_dict, output_dict, exec_properties)
        custom_config = json_utils.loads(
            exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY) or "null") or {}
        s = custom_config[CONFIG_KEY]
        model_run = artifact_utils.get_single_uri(
            output_dict[standard_component_specs.MODEL_RUN_KEY])
        serving_model_dir = path_utils.serving_model_dir(artifact_utils.get_single_uri(
            output_dict[standard_component_specs.MODEL_KEY]))
        fn_args = os.path.join(model_run, "tfjob", "fn_args.json")
        tfjob_worker.dump(input_dict, output_dict, exec_properties, fn_args)
        body = tfjob_spec(job_name(model_run), s["namespace"], s["image"], int(s["workers"]),
                          int(s.get("gpus_per_worker") or 0), fn_args, s.get("service_account", ""),
                          **{k: s[k] for k in ("cpu", "memory", "tmp_size") if s.get(k)})
        api, core = _kubernetes()
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]

        def chief_logs():
            return core.read_namespaced_pod_log(f"{name}-worker-0", namespace, tail_lines=40)

        # KFP stops a run's pods with SIGTERM: take the workers (and their GPUs) down too.
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_exit) if main_thread else None
        try:
            run_tfjob(api, body, self.poll_seconds, chief_logs)
        except (KeyboardInterrupt, SystemExit):
            log.warning("interrupted: deleting TFJob %s/%s", namespace, name)
            api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            raise
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous)
        if not fileio.exists(serving_model_dir):
            raise RuntimeError(f"TFJob {namespace}/{name} succeeded but wrote no model to "
                               f"{serving_model_dir}")
        log.info("TFJob %s/%s done; model in %s", namespace, name, serving_model_dir)


def _raise_exit(signum, frame):
    raise SystemExit(128 + signum)


EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)
