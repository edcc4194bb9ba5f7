"""The TFJob the Trainer launches: its spec against the Training Operator's own CRD
schema (tests/data/kubeflow.org_tfjobs.yaml), the status loop against a scripted
API, and the executor's hand-over to tfx_transfer.components.tfjob_worker."""
import copy
import json
import os

import jsonschema
import pytest
import yaml

from tfx_transfer.components import tfjob_trainer

HERE = os.path.dirname(os.path.abspath(__file__))
CRD = os.path.join(HERE, "data", "kubeflow.org_tfjobs.yaml")


def strict(schema):
    """The CRD schema, with unknown fields rejected where the API server would
    silently prune them: a misspelt field is a bug even if the server accepts it."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


@pytest.fixture(scope="module")
def validator():
    with open(CRD) as f:
        crd = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert crd["spec"]["names"]["kind"] == tfjob_trainer.KIND
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == tfjob_trainer.VERSION]
    assert crd["spec"]["group"] == tfjob_trainer.GROUP and version["served"]
    return jsonschema.Draft7Validator(strict(version["schema"]["openAPIV3Schema"]))


def spec(**overrides):
    args = dict(name="tfx-trainer-0123456789ab", namespace="kubeflow",
                image="registry.example.com/ml/tfx-transfer:1", workers=2, gpus_per_worker=1,
                fn_args_uri="gs://bucket/root/Trainer/model_run/7/tfjob/fn_args.json",
                service_account="tfx-transfer-trainer")
    args.update(overrides)
    return tfjob_trainer.tfjob_spec(**args)


def errors(validator, doc):
    return sorted(f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
                  for e in validator.iter_errors(doc))


@pytest.mark.parametrize("workers,gpus,sa", [(2, 1, "tfx-transfer-trainer"), (8, 0, ""),
                                             (1, 4, "")])
def test_generated_spec_validates_against_the_tfjob_crd(validator, workers, gpus, sa):
    assert errors(validator, spec(workers=workers, gpus_per_worker=gpus,
                                  service_account=sa)) == []


def test_the_schema_check_catches_broken_specs(validator):
    typo = spec()
    typo["spec"]["tfReplicaSpec"] = typo["spec"].pop("tfReplicaSpecs")
    assert any("tfReplicaSpec" in e for e in errors(validator, typo))
    string_replicas = spec()
    string_replicas["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] = "2"
    assert any("replicas" in e for e in errors(validator, string_replicas))
    nameless = spec()
    del nameless["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["name"]
    assert any("'name' is a required property" in e for e in errors(validator, nameless))
    misplaced = spec()
    misplaced["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["gpus"] = 1
    assert any("gpus" in e for e in errors(validator, misplaced))


def test_spec_runs_the_worker_entrypoint_with_the_settings():
    body = spec(workers=3, gpus_per_worker=2)
    worker = body["spec"]["tfReplicaSpecs"]["Worker"]
    assert set(body["spec"]["tfReplicaSpecs"]) == {"Worker"}  # worker 0 is the chief
    assert worker["replicas"] == 3 and worker["restartPolicy"] == "OnFailure"
    pod = worker["template"]["spec"]
    (c,) = pod["containers"]
    assert c["name"] == "tensorflow"  # the Training Operator looks the container up by name
    assert c["image"] == "registry.example.com/ml/tfx-transfer:1"
    assert c["command"] + c["args"] == [
        "python", "-m", "tfx_transfer.components.tfjob_worker", "--fn-args",
        "gs://bucket/root/Trainer/model_run/7/tfjob/fn_args.json"]
    wanted = {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": 2}
    assert c["resources"] == {"requests": wanted, "limits": wanted}
    assert pod["serviceAccountName"] == "tfx-transfer-trainer"
    assert {v["name"]: v["emptyDir"]["sizeLimit"] for v in pod["volumes"]} == {
        "tmp": "20Gi", "home": "1Gi"}
    cpu_only = spec(gpus_per_worker=0, cpu="500m", memory="2Gi", tmp_size="5Gi")
    pod = cpu_only["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]
    assert pod["containers"][0]["resources"] == {"requests": {"cpu": "500m", "memory": "2Gi"},
                                                 "limits": {"cpu": "500m", "memory": "2Gi"}}
    assert pod["volumes"][0]["emptyDir"] == {"sizeLimit": "5Gi"}


def test_worker_pods_run_locked_down():
    from test_k8s_manifests import check_pod_security

    check_pod_security(spec(), "generated TFJob")


def test_job_name_is_stable_per_execution_and_a_valid_dns_label():
    import re

    a = tfjob_trainer.job_name("gs://bucket/root/Trainer/model_run/7")
    assert a == tfjob_trainer.job_name("gs://bucket/root/Trainer/model_run/7")
    assert a != tfjob_trainer.job_name("gs://bucket/root/Trainer/model_run/8")
    # Pods are named <job>-worker-<i>: the name must leave room in 63 characters.
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", a) and len(a) + len("-worker-99") <= 63


class FakeTFJobs:
    """CustomObjectsApi over scripted TFJob statuses (one per poll)."""

    def __init__(self, statuses, exists=False, on_create=None):
        self.statuses, self.exists, self.on_create = list(statuses), exists, on_create
        self.created, self.deleted = [], []

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        from kubernetes.client.rest import ApiException

        assert (group, version, plural) == ("kubeflow.org", "v1", "tfjobs")
        if self.exists:
            raise ApiException(status=409, reason="AlreadyExists")
        self.created.append(body)
        if self.on_create:
            self.on_create(body)
        return body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        if isinstance(status, Exception):
            raise status
        return {"metadata": {"name": name, "namespace": namespace}, "status": status}

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.deleted.append(name)
        self.exists = False


def cond(kind, reason="", message="", t="2026-01-01T00:00:00Z"):
    return {"type": kind, "status": "True", "reason": reason, "message": message,
            "lastTransitionTime": t}


CREATED = {"conditions": [cond("Created", "TFJobCreated")]}
RUNNING = {"conditions": [cond("Created", "TFJobCreated"), cond("Running", "TFJobRunning")],
           "replicaStatuses": {"Worker": {"active": 2}}}


def test_run_tfjob_streams_the_status_until_it_succeeds(caplog):
    from kubernetes.client.rest import ApiException

    succeeded = {"conditions": RUNNING["conditions"] + [
        cond("Succeeded", "TFJobSucceeded", "TFJob kubeflow/j successfully completed.")],
        "replicaStatuses": {"Worker": {"succeeded": 2}}}
    api = FakeTFJobs([CREATED, RUNNING, ApiException(status=503, reason="Unavailable"),
                      RUNNING, succeeded])
    caplog.set_level("INFO", logger="tfx_transfer.tfjob")
    job = tfjob_trainer.run_tfjob(api, spec(), poll_seconds=0)
    assert job["status"] == succeeded and len(api.created) == 1
    text = caplog.text
    for expected in ("created: 2 worker(s)", "Created=True TFJobCreated", "Running=True",
                     "retrying", '"active": 2', "Succeeded=True TFJobSucceeded"):
        assert expected in text
    assert text.count("Running=True TFJobRunning") == 1  # each change once


def test_run_tfjob_fails_with_the_reason_and_the_chief_logs():
    failed = {"conditions": RUNNING["conditions"] + [
        cond("Failed", "TFJobFailed", "TFJob kubeflow/j has failed because 1 Worker "
             "replica(s) failed.")]}
    api = FakeTFJobs([CREATED, RUNNING, failed])
    with pytest.raises(tfjob_trainer.TFJobFailed) as e:
        tfjob_trainer.run_tfjob(api, spec(), poll_seconds=0,
                                logs=lambda: "ValueError: run_fn exploded")
    message = str(e.value)
    assert "TFJob kubeflow/tfx-trainer-0123456789ab failed: TFJobFailed" in message
    assert "1 Worker replica(s) failed" in message and "run_fn exploded" in message


def test_a_retried_trainer_follows_the_existing_job():
    done = {"conditions": [cond("Succeeded", "TFJobSucceeded")]}
    api = FakeTFJobs([done], exists=True)
    assert tfjob_trainer.run_tfjob(api, spec(), poll_seconds=0)["status"] == done
    assert api.created == [] and api.deleted == []


def test_a_retried_trainer_replaces_a_failed_job():
    failed = {"conditions": [cond("Failed", "TFJobFailed", "worker 0 OOMKilled")]}
    done = {"conditions": [cond("Succeeded", "TFJobSucceeded")]}
    api = FakeTFJobs([failed, RUNNING, done], exists=True)
    assert tfjob_trainer.run_tfjob(api, spec(), poll_seconds=0)["status"] == done
    assert api.deleted == ["tfx-trainer-0123456789ab"] and len(api.created) == 1


def fake_trainer_inputs(tmp_path):
    """Examples, schema and transform graph artefacts laid out as TFX writes them."""
    from tfx.types import artifact_utils, standard_artifacts

    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "examples")
    examples.split_names = artifact_utils.encode_split_names(["train", "eval"])
    for split in ("train", "eval"):
        os.makedirs(tmp_path / "examples" / f"Split-{split}")
    schema = standard_artifacts.Schema()
    schema.uri = str(tmp_path / "schema")
    os.makedirs(schema.uri)
    (tmp_path / "schema" / "schema.pbtxt").write_text('feature { name: "image" type: BYTES }\n')
    graph = standard_artifacts.TransformGraph()
    graph.uri = str(tmp_path / "transform_graph")
    model, model_run = standard_artifacts.Model(), standard_artifacts.ModelRun()
    model.uri, model_run.uri = str(tmp_path / "model"), str(tmp_path / "model_run")
    inputs = {"examples": [examples], "schema": [schema], "transform_graph": [graph]}
    return inputs, {"model": [model], "model_run": [model_run]}


def test_executor_hands_the_trainer_inputs_to_the_tfjob_workers(tmp_path, monkeypatch):
    from tfx_transfer.components import tfjob_worker as worker_main

    inputs, outputs = fake_trainer_inputs(tmp_path)
    settings = {"workers": 2, "gpus_per_worker": 1, "image": "img:1", "namespace": "ml",
                "service_account": "trainer"}
    exec_properties = {
        "run_fn": "tfx_transfer.modules.trainer.run_fn",
        "train_args": json.dumps({"splits": ["train"]}),
        "eval_args": json.dumps({"splits": ["eval"]}),
        "custom_config": json.dumps({"backbone": "MobileNetV2", "epochs": 1, "tfjob": settings})}
    seen = {}

    def operator(body):
        # What the workers would do: rebuild FnArgs from the file, chief writes the model.
        path = body["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0][
            "args"][1]
        seen["fn_args"] = worker_main.fn_args_from(*worker_main.load(path))
        os.makedirs(seen["fn_args"].serving_model_dir)

    api = FakeTFJobs([RUNNING, {"conditions": [cond("Succeeded", "TFJobSucceeded")]}],
                     on_create=operator)
    monkeypatch.setattr(tfjob_trainer, "_kubernetes", lambda: (api, None))
    executor = tfjob_trainer.Executor()
    executor.poll_seconds = 0
    executor.Do(inputs, outputs, exec_properties)

    (body,) = api.created
    assert body["metadata"]["namespace"] == "ml"
    assert body["metadata"]["name"] == tfjob_trainer.job_name(str(tmp_path / "model_run"))
    worker = body["spec"]["tfReplicaSpecs"]["Worker"]
    assert worker["replicas"] == 2 and worker["template"]["spec"]["serviceAccountName"] == "trainer"
    fn_args = seen["fn_args"]
    assert fn_args.train_files == [str(tmp_path / "examples" / "Split-train" / "*")]
    assert fn_args.eval_files == [str(tmp_path / "examples" / "Split-eval" / "*")]
    assert fn_args.transform_output == str(tmp_path / "transform_graph")
    assert fn_args.serving_model_dir == str(tmp_path / "model" / "Format-Serving")
    assert fn_args.model_run_dir == str(tmp_path / "model_run")
    assert fn_args.custom_config["tfjob"] == settings and fn_args.custom_config["epochs"] == 1


def test_executor_fails_when_the_job_wrote_no_model(tmp_path, monkeypatch):
    inputs, outputs = fake_trainer_inputs(tmp_path)
    exec_properties = {"run_fn": "tfx_transfer.modules.trainer.run_fn", "custom_config": json.dumps(
        {"tfjob": {"workers": 2, "image": "img:1", "namespace": "ml"}})}
    api = FakeTFJobs([{"conditions": [cond("Succeeded", "TFJobSucceeded")]}])
    monkeypatch.setattr(tfjob_trainer, "_kubernetes", lambda: (api, None))
    executor = tfjob_trainer.Executor()
    executor.poll_seconds = 0
    with pytest.raises(RuntimeError, match="wrote no model"):
        executor.Do(inputs, outputs, exec_properties)
