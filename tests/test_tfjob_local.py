"""The local Training Operator of submit --local (pipeline/tfjob_local.py),
driven by the TFJob executor's own loop (run_tfjob) through the kubernetes
client, with the spec tfjob_trainer generates."""
import json
import os
import subprocess
import sys

import pytest

from tfx_transfer.components import tfjob_trainer
from tfx_transfer.pipeline.runners.tfjob_local import Operator

# Stands in for pipeline.worker_main: writes what the Training Operator gave it.
WORKER = ("import json, os, sys; t = json.loads(os.environ['TF_CONFIG']); "
          "open(os.path.join(sys.argv[-1], 'w%d.json' % t['task']['index']), 'w').write("
          "json.dumps({'tf_config': t, 'home': os.environ['HOME'], 'argv': sys.argv[1:]})); "
          "sys.exit(7 if os.path.exists(os.path.join(sys.argv[-1], 'FAIL')) "
          "and t['task']['index'] == 1 else 0)")


@pytest.fixture
def operator(tmp_path):
    def start(pod, env, log_path):
        c = pod["container"]
        argv = c["command"] + c["args"]
        assert argv[:2] == ["python", "-c"] and c["image"] == "tfx-transfer:dev"
        return subprocess.Popen([sys.executable] + argv[1:], stdout=open(log_path, "w"),
                                stderr=subprocess.STDOUT, env={**os.environ, **env})

    op = Operator(start, str(tmp_path))
    kubeconfig = op.serve()
    yield op, kubeconfig
    op.close()


def api(kubeconfig):
    from kubernetes import client, config

    return client.CustomObjectsApi(config.new_client_from_config(kubeconfig))


def job(tmp_path, workers=2):
    body = tfjob_trainer.tfjob_spec("tfx-trainer-test", "kubeflow", "tfx-transfer:dev", workers, 0,
                                    str(tmp_path))
    container = body["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    container["command"] = ["python", "-c", WORKER, "--fn-args"]
    container["args"] = [str(tmp_path)]
    return body


def test_each_worker_gets_the_training_operators_tf_config(operator, tmp_path):
    op, kubeconfig = operator
    done = tfjob_trainer.run_tfjob(api(kubeconfig), job(tmp_path), poll_seconds=0.2)
    assert done["status"]["conditions"][-1]["type"] == "Succeeded"
    seen = [json.load(open(tmp_path / f"w{i}.json")) for i in range(2)]
    cluster = seen[0]["tf_config"]["cluster"]
    assert len(cluster["worker"]) == 2 and len(set(cluster["worker"])) == 2
    for i, s in enumerate(seen):
        assert s["tf_config"]["cluster"] == cluster
        assert s["tf_config"]["task"] == {"type": "worker", "index": i}
        assert s["home"] == tfjob_trainer.HOME  # the pod template's env
        assert s["argv"] == ["--fn-args", str(tmp_path)]


def test_a_failed_worker_fails_the_job_with_the_chiefs_log(operator, tmp_path):
    from kubernetes import client, config

    op, kubeconfig = operator
    (tmp_path / "FAIL").write_text("")
    core = client.CoreV1Api(config.new_client_from_config(kubeconfig))
    with pytest.raises(tfjob_trainer.TFJobFailed, match=r"worker\(s\) \[1\] exited with \[7\]"):
        tfjob_trainer.run_tfjob(api(kubeconfig), job(tmp_path), poll_seconds=0.2, logs=lambda:
                                core.read_namespaced_pod_log("tfx-trainer-test-worker-0",
                                                             "kubeflow", tail_lines=40))
