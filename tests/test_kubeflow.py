"""The Kubeflow spec compiled from create_pipeline (tfx-transfer compile) and the
submit path (tfx-transfer submit), checked without a cluster: the spec parses as
a KFP PipelineSpec, every component runs the configured image with TFX's
entrypoint, the runtime parameters are wired where they act, and a fake KFP API
server receives the run."""
import http.server
import importlib.util
import json
import threading

import pytest
from google.protobuf import json_format

from conftest import SAMPLE

IMAGE = "registry.example.com/ml/tfx-transfer:test"
ROOT = "gs://bucket/tfx-transfer"
DATA = "gs://bucket/data/cifar10-sample"
TFX_CMD = ["python", "-m", "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"]
HAS_PROJECTOR = importlib.util.find_spec("tfx_transfer.components.embedding_projector") is not None
EXECUTORS = {
    "ImageExampleGen": "tfx_transfer.components.image_example_gen.Executor",
    "StatisticsGen": "tfx.components.statistics_gen.executor.Executor",
    "SchemaGen": "tfx.components.schema_gen.executor.Executor",
    "ExampleValidator": "tfx.components.example_validator.executor.Executor",
    "Transform": "tfx.components.transform.executor.Executor",
    "Trainer": "tfx.components.trainer.executor.GenericExecutor",
    "Evaluator": "tfx.components.evaluator.executor.Executor",
    "Pusher": "tfx_transfer.components.atomic_pusher.Executor",  # atomic, idempotent push (issue #12)
}
if HAS_PROJECTOR:
    EXECUTORS["EmbeddingProjector"] = "tfx_transfer.components.embedding_projector.Executor"


def config(**overrides):
    from tfx_transfer.pipeline.config import RunConfig

    values = dict(data=DATA, data_layout="folders", backbone="MobileNetV2", weights="none",
                  image_size=32, epochs=2, batch_size=32, projector=HAS_PROJECTOR,
                  projector_samples=100)
    values.update(overrides)
    return RunConfig.from_dict(values)


def compile_to(tmp_path, name="pipeline.json", platform="kubeflow", **overrides):
    from tfx_transfer.pipeline.runners import kubeflow

    out = str(tmp_path / name)
    kubeflow.compile_pipeline(config(**overrides), out, image=IMAGE, pipeline_root=ROOT,
                              platform=platform)
    return out


def load(path):
    with open(path) as f:
        return json.load(f)


def tasks(job):
    return job["pipelineSpec"]["root"]["dag"]["tasks"]


def container(job, task):
    spec = job["pipelineSpec"]
    label = spec["components"][tasks(job)[task]["componentRef"]["name"]]["executorLabel"]
    return spec["deploymentSpec"]["executors"][label]["container"]


def executor_class(job, task):
    args = container(job, task)["args"]
    return args[args.index("--executor_class_path") + 1]


def flat(sections):
    """The fields of a sectioned custom_config by name."""
    return {k: v for section in sections.values() if isinstance(section, dict)
            for k, v in section.items()}


def trainer_sections(job):
    params = job["pipelineSpec"]["root"]["inputDefinitions"]["parameters"]
    return json.loads(params["trainer_config"]["defaultValue"])


def trainer_defaults(job):
    return flat(trainer_sections(job))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """The CLI's compile: flags like `run`, the image, a gs:// root."""
    from tfx_transfer.pipeline import cli

    out = tmp_path_factory.mktemp("kfp") / "pipeline.json"
    argv = ["compile", "--data", DATA, "--data-layout", "folders", "--weights", "none",
            "--image-size", "32", "--epochs", "2", "--batch-size", "32",
            "--image", IMAGE, "--pipeline-root", ROOT, "--output", str(out)]
    if not HAS_PROJECTOR:
        argv.append("--no-projector")
    assert cli.main(argv) == 0
    return load(out)


def test_compiled_file_parses_as_a_kfp_pipeline_job(compiled):
    from kfp.pipeline_spec import pipeline_spec_pb2

    job = json_format.ParseDict(compiled, pipeline_spec_pb2.PipelineJob())
    spec = json_format.ParseDict(compiled["pipelineSpec"], pipeline_spec_pb2.PipelineSpec())
    assert spec.schema_version == "2.1.0" and spec.pipeline_info.name == "tfx-transfer"
    assert job.runtime_config.gcs_output_directory == ROOT
    assert spec.default_pipeline_root == ROOT


def test_every_component_runs_the_image_with_the_tfx_entrypoint(compiled):
    assert set(tasks(compiled)) == set(EXECUTORS)
    for task, executor in EXECUTORS.items():
        c = container(compiled, task)
        assert c["image"] == IMAGE, task
        assert c["command"] == TFX_CMD, task
        assert executor_class(compiled, task) == executor
        assert c["args"][c["args"].index("--json_serialized_invocation_args") + 1] == "{{$}}"
        # The pipeline's Beam arguments go to every component (FnApiRunner unless set).
        assert c["args"][-2:] == ["--runner=FnApiRunner", "--direct_num_workers=1"], task


def test_module_code_comes_from_the_image_not_a_wheel(compiled):
    trainer = tasks(compiled)["Trainer"]["inputs"]["parameters"]
    transform = tasks(compiled)["Transform"]["inputs"]["parameters"]
    assert trainer["run_fn"]["runtimeValue"]["constant"] == "tfx_transfer.modules.trainer.run_fn"
    assert transform["preprocessing_fn"]["runtimeValue"]["constant"] == \
        "tfx_transfer.modules.transform.preprocessing_fn"
    text = json.dumps(compiled)
    assert "module_file" not in text and ".whl" not in text


def test_runtime_parameters_reach_the_components(compiled):
    params = compiled["pipelineSpec"]["root"]["inputDefinitions"]["parameters"]
    assert set(params) == {"data_root", "trainer_config"}
    assert params["data_root"]["defaultValue"] == DATA
    assert compiled["runtimeConfig"]["parameterValues"]["data_root"] == DATA
    cfg = trainer_defaults(compiled)
    assert (cfg["backbone"], cfg["mode"], cfg["epochs"], cfg["image_size"]) == \
        ("MobileNetV2", "linear_probe", 2, 32)
    t = tasks(compiled)
    assert t["ImageExampleGen"]["inputs"]["parameters"]["input_base"] == \
        {"componentInputParameter": "data_root"}
    # The Transform's preprocessing and the Trainer's model read the same parameter.
    for task in ("Transform", "Trainer"):
        assert t[task]["inputs"]["parameters"]["custom_config"] == \
            {"componentInputParameter": "trainer_config"}


def test_caching_is_on_for_every_task_and_follows_the_config(compiled, tmp_path):
    assert all(t["cachingOptions"] == {"enableCache": True} for t in tasks(compiled).values())
    job = load(compile_to(tmp_path, enable_cache=False, projector=False))
    assert not any(t.get("cachingOptions", {}).get("enableCache") for t in tasks(job).values())


def test_kubeflow_spec_has_no_resolver_and_vertex_spec_does(compiled, tmp_path):
    assert "baseline_model" not in tasks(compiled)["Evaluator"]["inputs"]["artifacts"]
    vertex = load(compile_to(tmp_path, platform="vertex", projector=False))
    names = set(tasks(vertex))
    assert {"latest_blessed_model_resolver-model-blessing-resolver",
            "latest_blessed_model_resolver-model-resolver"} <= names
    label = vertex["pipelineSpec"]["components"][
        "latest_blessed_model_resolver-model-resolver"]["executorLabel"]
    assert "resolver" in vertex["pipelineSpec"]["deploymentSpec"]["executors"][label]
    baseline = tasks(vertex)["Evaluator"]["inputs"]["artifacts"]["baseline_model"]
    assert baseline["taskOutputArtifact"]["producerTask"] == \
        "latest_blessed_model_resolver-model-resolver"


def test_a_config_change_shows_up_in_the_spec(compiled, tmp_path):
    beam = ["--runner=DataflowRunner", "--project=my-project", "--region=europe-west1",
            f"--temp_location={ROOT}/tmp"]
    job = load(compile_to(tmp_path, backbone="ResNet50", image_size=64, epochs=3,
                          mode="fine_tune", data_layout="hash", beam_args=beam,
                          serving_dir="gs://bucket/serving", projector=False))
    cfg = trainer_defaults(job)
    assert (cfg["backbone"], cfg["mode"], cfg["epochs"], cfg["image_size"]) == \
        ("ResNet50", "fine_tune", 3, 64)
    for task in ("ImageExampleGen", "StatisticsGen", "Transform", "Evaluator"):
        args = container(job, task)["args"]
        assert args[-len(beam):] == beam and "--runner=FnApiRunner" not in args, task
    gen = tasks(job)["ImageExampleGen"]["inputs"]["parameters"]
    before = tasks(compiled)["ImageExampleGen"]["inputs"]["parameters"]
    split = json.loads(gen["input_config"]["runtimeValue"]["constant"])
    assert [s["name"] for s in split["splits"]] == ["single_split"]
    assert "train/*/*" in before["input_config"]["runtimeValue"]["constant"]
    assert "hash_buckets" in gen["output_config"]["runtimeValue"]["constant"]
    pusher = tasks(job)["Pusher"]["inputs"]["parameters"]["push_destination"]
    assert "gs://bucket/serving/classifier" in pusher["runtimeValue"]["constant"]
    default_pusher = tasks(compiled)["Pusher"]["inputs"]["parameters"]["push_destination"]
    assert f"{ROOT}/serving/classifier" in default_pusher["runtimeValue"]["constant"]


def test_tfjob_trainer_is_compiled_in(tmp_path):
    job = load(compile_to(tmp_path, image=IMAGE, tfjob_workers=4, tfjob_gpus_per_worker=2,
                          tfjob_service_account="tfx-transfer-trainer", namespace="ml",
                          projector=False))
    assert executor_class(job, "Trainer") == "tfx_transfer.components.tfjob_trainer.Executor"
    assert trainer_sections(job)["tfjob"] == {
        "workers": 4, "gpus_per_worker": 2, "image": IMAGE, "namespace": "ml",
        "service_account": "tfx-transfer-trainer", "cpu": "4", "memory": "16Gi",
        "tmp_size": "20Gi"}


def test_pipeline_root_must_be_storage_the_platform_accepts():
    from tfx_transfer.pipeline.config import ConfigError
    from tfx_transfer.pipeline.runners.kubeflow import check_pipeline_root

    assert check_pipeline_root("s3://bucket/root/", "kubeflow") == "s3://bucket/root"
    for root, platform in (("/mnt/pvc/root", "kubeflow"), (None, "kubeflow"),
                           ("s3://bucket/root", "vertex")):
        with pytest.raises(ConfigError, match="--pipeline-root"):
            check_pipeline_root(root, platform)


def test_auto_layout_needs_a_listable_data_root():
    from tfx_transfer.pipeline.data_sources import DataSourceError, image_splits as split_layout

    with pytest.raises(DataSourceError, match="data_layout"):
        split_layout(DATA, 0.2, "auto")
    inputs, outputs = split_layout(DATA, 0.2, "folders")
    assert [s.pattern for s in inputs.splits] == ["train/*/*", "test/*/*"] and outputs is None
    inputs, outputs = split_layout(SAMPLE, 0.2, "auto")  # a local folder is listed
    assert [s.pattern for s in inputs.splits] == ["train/*/*", "test/*/*"]
    inputs, outputs = split_layout(SAMPLE, 0.2, "hash")
    assert [s.name for s in inputs.splits] == ["single_split"] and outputs is not None


# --------------------------------------------------------------------------
def test_params_edit_trainer_config_fields_and_reject_unknown_ones(compiled):
    from tfx_transfer.pipeline.config import ConfigError
    from tfx_transfer.pipeline.runners.kubeflow import parameter_values

    spec = compiled["pipelineSpec"]
    values = parameter_values(spec, ["backbone=ResNet50", "epochs=3", "image_size=64",
                                     "mode=lp_ft", "data_root=gs://other/data"])
    assert values["data_root"] == "gs://other/data"
    cfg = flat(json.loads(values["trainer_config"]))
    assert (cfg["backbone"], cfg["epochs"], cfg["image_size"], cfg["mode"]) == \
        ("ResNet50", 3, 64, "lp_ft")
    assert cfg["batch_size"] == trainer_defaults(compiled)["batch_size"]
    with pytest.raises(ConfigError, match="unknown parameter.*backbone"):
        parameter_values(spec, ["epocs=3"])
    with pytest.raises(ConfigError, match="'mode'"):
        parameter_values(spec, ["mode=probe_everything"])
    with pytest.raises(ConfigError, match="'epochs'"):
        parameter_values(spec, ["epochs=three"])
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        parameter_values(spec, ["epochs"])
    with pytest.raises(ConfigError, match="tfjob.workers"):
        parameter_values(spec, ["tfjob.workers=2"])  # compiled without a TFJob trainer


class FakeKfp(http.server.BaseHTTPRequestHandler):
    """The part of the KFP v2beta1 REST API that kfp.Client uses to start a run."""

    requests = []

    def _reply(self, body, status=200):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        FakeKfp.requests.append(("GET", self.path, None))
        if self.path.startswith("/apis/v2beta1/healthz"):
            return self._reply({"multi_user": False})
        if self.path.startswith("/apis/v2beta1/experiments"):
            return self._reply({"experiments": [], "total_size": 0})
        self._reply({"error": "not found"}, 404)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        FakeKfp.requests.append(("POST", self.path, body))
        if self.path == "/apis/v2beta1/experiments":
            return self._reply({"experiment_id": "exp-1", "display_name": body["display_name"]})
        if self.path == "/apis/v2beta1/runs":
            if "no_such_param" in json.dumps(body.get("runtime_config")):
                return self._reply({"error": "unknown input parameter", "code": 3}, 400)
            return self._reply({"run_id": "run-1", "display_name": body["display_name"]})
        self._reply({"error": "not found"}, 404)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_kfp():
    FakeKfp.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeKfp)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def package_file(compiled, tmp_path):
    path = tmp_path / "pipeline.json"
    path.write_text(json.dumps(compiled))
    return str(path)


def test_submit_creates_a_run_with_the_parameters(compiled, fake_kfp, tmp_path, capsys):
    from tfx_transfer.pipeline import cli

    rc = cli.main(["submit", "--host", fake_kfp, "--experiment", "transfer",
                   package_file(compiled, tmp_path), "--param", "epochs=5",
                   "--param", "data_root=gs://other/data"])
    assert rc == 0
    assert "run run-1 created" in capsys.readouterr().out
    posts = {path: body for method, path, body in FakeKfp.requests if method == "POST"}
    assert posts["/apis/v2beta1/experiments"]["display_name"] == "transfer"
    run = posts["/apis/v2beta1/runs"]
    assert run["experiment_id"] == "exp-1"
    assert set(run["pipeline_spec"]["root"]["dag"]["tasks"]) == set(EXECUTORS)
    runtime = run["runtime_config"]
    assert runtime["pipeline_root"] == ROOT
    assert runtime["parameters"]["data_root"] == "gs://other/data"
    assert json.loads(runtime["parameters"]["trainer_config"])["training"]["epochs"] == 5


def test_submit_reports_an_unknown_parameter_before_contacting_the_host(compiled, fake_kfp,
                                                                        tmp_path, capsys):
    from tfx_transfer.pipeline import cli

    rc = cli.main(["submit", "--host", fake_kfp, package_file(compiled, tmp_path),
                   "--param", "learning_rat=0.1"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "learning_rat: unknown parameter" in err and "learning_rate" in err
    assert FakeKfp.requests == []


def test_submit_reports_an_unreachable_host(compiled, tmp_path, capsys):
    import portpicker

    from tfx_transfer.pipeline import cli

    host = f"http://127.0.0.1:{portpicker.pick_unused_port()}"
    rc = cli.main(["submit", "--host", host, package_file(compiled, tmp_path)])
    assert rc == 2
    assert f"cannot reach Kubeflow Pipelines at {host}" in capsys.readouterr().err


def test_submit_reports_what_the_server_refused(compiled, fake_kfp, tmp_path, capsys):
    from tfx_transfer.pipeline import cli

    spec = dict(compiled)
    spec["pipelineSpec"] = json.loads(json.dumps(compiled["pipelineSpec"]))
    spec["pipelineSpec"]["root"]["inputDefinitions"]["parameters"]["no_such_param"] = {
        "parameterType": "STRING"}
    rc = cli.main(["submit", "--host", fake_kfp, package_file(spec, tmp_path),
                   "--param", "no_such_param=1"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "refused: 400" in err and "unknown input parameter" in err


def test_yaml_output_is_the_spec_kfp_reads(tmp_path):
    from kfp.client import client as kfp_client

    from tfx_transfer.pipeline.runners.kubeflow import load_package

    path = compile_to(tmp_path, "pipeline.yaml", projector=False)
    doc = kfp_client._extract_pipeline_yaml(path)  # what kfp 2.5 does with a package file
    assert doc.pipeline_spec.default_pipeline_root == ROOT
    params = doc.pipeline_spec.root.input_definitions.parameters
    assert params["data_root"].default_value.string_value == DATA
    assert params["trainer_config"].is_optional
    spec, runtime = load_package(path)
    assert set(spec["root"]["dag"]["tasks"]) == set(EXECUTORS) - {"EmbeddingProjector"}
    assert runtime == {}
