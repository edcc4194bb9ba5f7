"""A stand-in for the Kubeflow Training Operator, for `submit --local`.

The Trainer task of a pipeline compiled with tfjob_workers > 0 runs
components/tfjob_trainer.py's executor, which creates a TFJob through the
Kubernetes API and follows its status. Locally, the launcher serves the few
Kubernetes API calls that executor makes (create, get and delete a TFJob, read
worker 0's log) on 127.0.0.1 and hands the Trainer a kubeconfig naming it.
A created TFJob's Worker replicas run as processes or containers with the
generated pod template's command, args and env, and the TF_CONFIG the
Training Operator gives each worker, so the spec tfjob_trainer generates is
what runs. Containers get the operator's own TF_CONFIG
(<job>-worker-<i>.<namespace>.svc:2222, each worker in its own network
namespace); processes meet on 127.0.0.1 ports instead. Not reproduced:
scheduling, restarts (restartPolicy/backoffLimit: a failed worker fails the
job), runAsUser (workers run as the caller, like the tasks), resource and GPU
limits, emptyDir size limits.
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Dict, List, Optional

JOB_PATH = re.compile(r"^/apis/kubeflow\.org/v1/namespaces/([^/]+)/tfjobs(?:/([^/?]+))?")
LOG_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/log")
KUBECONFIG_FILE = "kubeconfig.yaml"
# The Training Operator's port for a replica whose container names no "tfjob-port".
TFJOB_PORT = 2222


def free_ports(n: int) -> List[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def local_addresses(name: str, namespace: str, n: int) -> List[str]:
    """Worker addresses for processes on this machine: free 127.0.0.1 ports."""
    return [f"127.0.0.1:{p}" for p in free_ports(n)]


def pod_name(job: str, index: int) -> str:
    return f"{job}-worker-{index}"


def service_host(pod: Dict) -> str:
    return f"{pod['name']}.{pod['namespace']}.svc"


def service_addresses(name: str, namespace: str, n: int) -> List[str]:
    """Worker addresses as the Training Operator writes them: each replica's
    headless service (genClusterSpec in its pkg/controller.v1/tensorflow)."""
    return [f"{pod_name(name, i)}.{namespace}.svc:{TFJOB_PORT}" for i in range(n)]


def tf_configs(workers: List[str]) -> List[Dict]:
    """The TF_CONFIG of each Worker replica, as the Training Operator writes it."""
    return [{"cluster": {"worker": workers}, "task": {"type": "worker", "index": i},
             "environment": "cloud"} for i in range(len(workers))]


class Operator:
    """Runs TFJobs' Worker replicas with start(pod, env, log_path) -> Popen, where
    pod = {name, namespace, container, spec} comes from the replica's template."""

    def __init__(self, start: Callable[[Dict, Dict[str, str], str], subprocess.Popen],
                 log_dir: str, addresses=local_addresses):
        self.start, self.log_dir, self.addresses = start, log_dir, addresses
        self.jobs: Dict[str, Dict] = {}
        self.lock = threading.Lock()
        self.server: Optional[ThreadingHTTPServer] = None

    # -- the Training Operator's part --------------------------------------
    def create(self, body: Dict) -> Dict:
        name, namespace = body["metadata"]["name"], body["metadata"].get("namespace", "default")
        replica = body["spec"]["tfReplicaSpecs"]["Worker"]
        n = int(replica["replicas"])
        spec = replica["template"]["spec"]
        container = spec["containers"][0]
        procs, logs = [], []
        for i, tf_config in enumerate(tf_configs(self.addresses(name, namespace, n))):
            env = {e["name"]: e["value"] for e in container.get("env", [])}
            env["TF_CONFIG"] = json.dumps(tf_config)
            pod = {"name": pod_name(name, i), "namespace": namespace, "container": container,
                   "spec": spec}
            log_path = os.path.join(self.log_dir, pod["name"] + ".log")
            procs.append(self.start(pod, env, log_path))
            logs.append(log_path)
        job = dict(body, status={"conditions": [{"type": "Running", "status": "True"}]})
        with self.lock:
            self.jobs[name] = {"body": job, "procs": procs, "logs": logs}
        return job

    def get(self, name: str) -> Optional[Dict]:
        with self.lock:
            job = self.jobs.get(name)
        if not job:
            return None
        codes = [p.poll() for p in job["procs"]]
        conditions = job["body"]["status"]["conditions"]
        if any(c not in (None, 0) for c in codes) and conditions[-1]["type"] != "Failed":
            bad = [i for i, c in enumerate(codes) if c not in (None, 0)]
            self.delete(name, forget=False)
            conditions.append({"type": "Failed", "status": "True", "reason": "TFJobFailed",
                               "message": f"worker(s) {bad} exited with {[codes[i] for i in bad]}"})
        elif all(c == 0 for c in codes) and conditions[-1]["type"] == "Running":
            conditions.append({"type": "Succeeded", "status": "True", "reason": "TFJobSucceeded"})
        return job["body"]

    def delete(self, name: str, forget: bool = True) -> None:
        with self.lock:
            job = self.jobs.pop(name, None) if forget else self.jobs.get(name)
        for p in (job or {}).get("procs", []):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()

    def log(self, pod: str) -> str:
        path = os.path.join(self.log_dir, pod + ".log")
        if not os.path.exists(path):
            return ""
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-40:])

    # -- the Kubernetes API around it ---------------------------------------
    def serve(self) -> str:
        """Starts the API on 127.0.0.1; returns the kubeconfig file naming it."""
        operator = self

        class Handler(BaseHTTPRequestHandler):
            def reply(self, status, body):
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def not_found(self):
                self.reply(404, {"kind": "Status", "status": "Failure", "reason": "NotFound",
                                 "code": 404, "message": f"{self.path} not found"})

            def do_POST(self):
                m = JOB_PATH.match(self.path)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not m or body.get("kind") != "TFJob":
                    return self.not_found()
                if operator.get(body["metadata"]["name"]):
                    return self.reply(409, {"kind": "Status", "code": 409, "reason": "AlreadyExists"})
                try:
                    self.reply(201, operator.create(body))
                except Exception as e:  # the Trainer reports it, naming the job
                    self.reply(500, {"kind": "Status", "code": 500, "reason": "InternalError",
                                     "message": f"local Training Operator: {e!r}"})

            def do_GET(self):
                m, log = JOB_PATH.match(self.path), LOG_PATH.match(self.path)
                if log:
                    return self.reply(200, operator.log(log.group(2)))
                job = operator.get(m.group(2)) if m and m.group(2) else None
                return self.reply(200, job) if job else self.not_found()

            def do_DELETE(self):
                m = JOB_PATH.match(self.path)
                if not m or not m.group(2):
                    return self.not_found()
                operator.delete(m.group(2))
                self.reply(200, {"kind": "Status", "status": "Success"})

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        port = self.server.server_address[1]
        path = os.path.join(self.log_dir, KUBECONFIG_FILE)
        with open(path, "w") as f:
            json.dump({"apiVersion": "v1", "kind": "Config", "current-context": "local",
                       "clusters": [{"name": "local", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                       "users": [{"name": "local", "user": {"token": "local"}}],
                       "contexts": [{"name": "local", "context": {"cluster": "local", "user": "local"}}]},
                      f)
        return path

    def close(self) -> None:
        for name in list(self.jobs):
            self.delete(name)
        if self.server:
            self.server.shutdown()
            self.server.server_close()

