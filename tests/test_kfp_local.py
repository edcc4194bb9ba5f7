"""submit --local (pipeline/runners/kfp_local.py): the KFP v2 contract on a small
hand-written spec (fast), and the compiled pipeline of the bundled sample run
task by task against a LocalDagRunner run of the same config (slow)."""
import glob
import json
import os
import subprocess

import pytest

from tfx_transfer.pipeline.runners import kfp_local

# A task's program: reads the ExecutorInput ({{$}}), writes its output
# artifact's file and an ExecutorOutput with metadata, as TFX's entrypoint does.
STEP = r"""
import json, os, sys
ex = json.loads(sys.argv[1])
art = ex["outputs"]["artifacts"]["out"]["artifacts"][0]
got = ex["inputs"].get("artifacts", {}).get("inp")
text = ex["inputs"]["parameterValues"]["word"]
if got:
    a = got["artifacts"][0]
    text = open(os.path.join(a["uri"], "data")).read() + "+" + a["metadata"]["note"] + "+" + text
if text == "fail":
    sys.exit(3)
os.makedirs(art["uri"], exist_ok=True)
open(os.path.join(art["uri"], "data"), "w").write(text)
with open(ex["outputs"]["outputFile"], "w") as f:
    json.dump({"artifacts": {"out": {"artifacts": [dict(art, metadata={"note": "n-" + text})]}}}, f)
print("ran", sys.argv[2])
"""


def spec(root, word="hello", cache=True):
    component = {
        "executorLabel": "exec",
        "inputDefinitions": {"parameters": {"word": {"parameterType": "STRING"}}},
        "outputDefinitions": {"artifacts": {"out": {"artifactType": {"schemaTitle": "system.Artifact"}}}},
    }
    second = json.loads(json.dumps(component))
    second["executorLabel"] = "exec2"
    second["inputDefinitions"]["artifacts"] = {"inp": {"artifactType": {"schemaTitle": "system.Artifact"}}}
    container = {"image": "unused:tag", "command": ["python", "-c", STEP],
                 "args": ["{{$}}", "{{$.pipeline_task_name}}"]}
    task = {"cachingOptions": {"enableCache": cache}}
    return {
        "pipelineInfo": {"name": "tiny"},
        "defaultPipelineRoot": str(root),
        "root": {
            "inputDefinitions": {"parameters": {"word": {"parameterType": "STRING",
                                                         "defaultValue": word}}},
            "dag": {"tasks": {
                "second": dict(task, componentRef={"name": "comp-second"}, dependentTasks=["first"],
                               taskInfo={"name": "second"},
                               inputs={"artifacts": {"inp": {"taskOutputArtifact": {
                                   "producerTask": "first", "outputArtifactKey": "out"}}},
                                   "parameters": {"word": {"runtimeValue": {"constant": "const"}}}}),
                "first": dict(task, componentRef={"name": "comp-first"}, taskInfo={"name": "first"},
                              inputs={"parameters": {"word": {"componentInputParameter": "word"}}}),
            }},
        },
        "components": {"comp-first": component, "comp-second": second},
        "deploymentSpec": {"executors": {"exec": {"container": container},
                                         "exec2": {"container": container}}},
    }


def write(tmp_path, **kw):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"pipelineSpec": spec(tmp_path / "root", **kw), "runtimeConfig": {}}))
    return str(path)


def test_tasks_run_in_dag_order_and_hand_artifacts_downstream(tmp_path):
    lines = []
    result = kfp_local.run(write(tmp_path), ["word=hi"], echo=lines.append)
    tasks = result["tasks"]
    assert [l.split()[0] for l in lines[1:]] == ["first", "second"]
    assert all(t["state"] == "SUCCEEDED" for t in tasks.values())
    out = tasks["second"]["outputs"]["artifacts"]["out"]
    # output URIs live under the pipeline root, one folder per run and task
    assert out["uri"] == os.path.join(result["run_dir"], "second", "out")
    assert result["run_dir"].startswith(str(tmp_path / "root") + os.sep)
    # the upstream file, the metadata its executor reported, then this task's constant
    assert open(os.path.join(out["uri"], "data")).read() == "hi+n-hi+const"
    log = open(os.path.join(result["run_dir"], "first", kfp_local.LOG_FILE)).read()
    assert "ran first" in log  # {{$.pipeline_task_name}} resolved


def test_rerun_reuses_cached_tasks_and_a_changed_input_reruns(tmp_path):
    package = write(tmp_path)
    first = kfp_local.run(package, [], echo=lambda _: None)
    again = kfp_local.run(package, [], echo=lambda _: None)
    assert {t["state"] for t in again["tasks"].values()} == {"CACHED"}
    assert again["tasks"]["second"]["outputs"] == first["tasks"]["second"]["outputs"]
    changed = kfp_local.run(package, ["word=other"], echo=lambda _: None)
    assert {t["state"] for t in changed["tasks"].values()} == {"SUCCEEDED"}
    off = kfp_local.run(write(tmp_path, cache=False), [], echo=lambda _: None)
    assert {t["state"] for t in off["tasks"].values()} == {"SUCCEEDED"}


def test_a_failed_task_names_itself_and_its_log(tmp_path, capsys):
    from tfx_transfer.pipeline.cli import main

    rc = main(["submit", "--local", write(tmp_path), "--param", "word=fail"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "task first failed (exit code 3); log: " in err
    log = err.split("log: ")[1].strip()
    assert log.endswith(os.path.join("first", kfp_local.LOG_FILE)) and os.path.exists(log)


def test_a_non_local_root_and_a_cycle_are_refused(tmp_path):
    path = tmp_path / "p.json"
    s = spec("gs://bucket/root")
    path.write_text(json.dumps({"pipelineSpec": s}))
    with pytest.raises(kfp_local.LocalRunError, match="--platform local"):
        kfp_local.run(str(path), [])
    with pytest.raises(kfp_local.LocalRunError, match="cycle"):
        kfp_local.topological({"a": {"dependentTasks": ["b"]}, "b": {"dependentTasks": ["a"]}})


def test_container_mounts_every_local_path_the_task_names(tmp_path):
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    weights = tmp_path / "w.h5"
    weights.write_text("")
    cfg = json.dumps({"weights": str(weights), "inner": [str(data / "train")]})
    paths = kfp_local.local_paths([str(data), cfg, str(tmp_path / "root" / "not-yet" / "x"),
                                   "gs://bucket/x", "plain"])
    # the missing output path mounts its nearest existing parent, which holds the rest
    assert paths == [str(tmp_path)]
    assert kfp_local.local_paths([str(data), str(weights)]) == [str(data), str(weights)]


def test_podman_runs_on_the_mounted_image_with_its_environment(tmp_path, monkeypatch):
    monkeypatch.setattr(kfp_local.shutil, "which", lambda name: "/usr/bin/" + name)
    containers = kfp_local.Containers("podman", {})
    calls = []

    def engine(*args):
        calls.append(args)
        if args[:2] == ("image", "inspect"):
            return json.dumps({"Env": ["PATH=/opt/py/bin:/usr/bin", "HOME=/home/tfx"]})
        return "/var/lib/containers/storage/vfs/dir/abc\n"

    monkeypatch.setattr(containers, "_call", engine)
    monkeypatch.setattr(kfp_local.subprocess, "call", lambda argv, **kw: 0)  # image exists
    argv = [containers.command("img:1", ["python", "-c", "pass"], [str(tmp_path)], "/w",
                               {"HOME": "/x"}, "task") for _ in range(2)][-1]
    assert [c[:2] for c in calls] == [("image", "inspect"), ("image", "mount")]  # once per image
    assert "img:1" not in argv  # no copy of the image: its directory under an overlay
    assert argv[-4:] == ["/var/lib/containers/storage/vfs/dir/abc:O", "python", "-c", "pass"]
    assert "--rootfs" in argv
    env = [argv[j + 1] for j, a in enumerate(argv) if a == "-e"]
    # the image's environment first, the task's after it (the later one wins)
    assert env == ["PATH=/opt/py/bin:/usr/bin", "HOME=/home/tfx", "HOME=/x"]
    assert f"{tmp_path}:{tmp_path}" in argv


def test_tfjob_worker_pods_become_containers_on_a_network_by_their_service_names(tmp_path,
                                                                               monkeypatch):
    from tfx_transfer.components import tfjob_trainer

    monkeypatch.setattr(kfp_local.shutil, "which", lambda name: "/usr/bin/" + name)
    containers = kfp_local.Containers("docker", {})
    monkeypatch.setattr(containers, "network", lambda name: "net-" + name[-5:])
    started = []

    class Done:
        def poll(self):
            return 0

    monkeypatch.setattr(kfp_local.subprocess, "Popen", lambda argv, **kw: started.append(argv) or Done())
    log_dir = tmp_path / "tfjob"
    op = kfp_local._operator(containers, str(log_dir), {}, [str(tmp_path)], "run-1")
    body = tfjob_trainer.tfjob_spec("tfx-trainer-x", "kubeflow", "img:1", 2, 0, str(tmp_path / "fn"))
    op.create(body)
    assert len(started) == 2
    workers = [f"tfx-trainer-x-worker-{i}.kubeflow.svc:2222" for i in range(2)]
    for i, argv in enumerate(started):
        pod = f"tfx-trainer-x-worker-{i}"
        flags = {a: b for a, b in zip(argv, argv[1:])}
        assert flags["--name"] == flags["--hostname"] == pod
        assert flags["--network"] == "net-run-1"
        assert flags["--network-alias"] == f"{pod}.kubeflow.svc"
        # the pod template: read-only root, emptyDir volumes, no capabilities
        assert "--read-only" in argv and flags["--cap-drop"] == "all"
        mounts = [argv[j + 1] for j, a in enumerate(argv) if a == "-v"]
        assert f"{log_dir / pod / 'tmp'}:/tmp" in mounts and str(tmp_path) + ":" + str(tmp_path) in mounts
        assert f"{log_dir / pod / 'home'}:{tfjob_trainer.HOME}" in mounts
        env = [argv[j + 1] for j, a in enumerate(argv) if a == "-e"]
        tf_config = json.loads([e for e in env if e.startswith("TF_CONFIG=")][0].split("=", 1)[1])
        assert tf_config == {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i},
                             "environment": "cloud"}
        assert argv[argv.index("img:1") + 1:] == tfjob_trainer.WORKER_COMMAND + ["--fn-args",
                                                                               str(tmp_path / "fn")]
    op.close()


IMAGE = "tfx-transfer:dev"


def run_compiled(config, tmp, engine, root=None, **changes):
    """The tiny_run config compiled for KFP and run with submit --local."""
    from tfx_transfer.pipeline.runners import kubeflow

    package = str(tmp / "pipeline.json")
    kubeflow.compile_pipeline(config.replace(output=str(tmp / "unused"), **changes), package,
                              image=IMAGE, pipeline_root=str(root or tmp / "root"),
                              platform="local")
    return kfp_local.run(package, [], engine=engine)


def check_matches_the_local_run(tiny_run, result):
    from tfx_transfer.pipeline.runners.summary import read_evaluation

    config, summary = tiny_run
    tasks = result["tasks"]
    assert all(t["state"] == "SUCCEEDED" for t in tasks.values())
    check_blessed_and_pushed(config, summary, tasks)
    # the runs are deterministic: the same accuracy as the LocalDagRunner run
    evaluation = read_evaluation(tasks["Evaluator"]["outputs"]["artifacts"]["evaluation"]["uri"],
                                 summary["classes"])
    assert evaluation["accuracy"] == pytest.approx(summary["metrics"]["accuracy"], abs=1e-6)
    assert evaluation["example_count"] == summary["metrics"]["example_count"]


def check_blessed_and_pushed(config, summary, tasks):
    import tensorflow as tf

    assert set(tasks) >= {"ImageExampleGen", "Transform", "Trainer", "Evaluator", "Pusher"}
    blessing = tasks["Evaluator"]["outputs"]["artifacts"]["blessing"]
    assert os.path.exists(os.path.join(blessing["uri"], "BLESSED"))
    pushed = tasks["Pusher"]["outputs"]["artifacts"]["pushed_model"]
    assert pushed["metadata"]["pushed"] == 1
    # TF Serving's layout: <serving dir>/<model name>/<numeric version>/saved_model.pb
    version_dir = pushed["metadata"]["pushed_destination"]
    assert os.path.basename(version_dir).isdigit()
    assert os.path.basename(os.path.dirname(version_dir)) == config.deploy.model_name
    model = tf.saved_model.load(version_dir)
    files = sorted(glob.glob(os.path.join(config.data.data, "test", "*", "*.jpg")))[:4]
    out = model.signatures["serving_images"](images=tf.constant([open(f, "rb").read()
                                                                for f in files]))
    assert {n.decode() for n in out["class_names"].numpy()} <= set(summary["classes"])


# Nine tasks, each starting Python and TensorFlow: past the default timeout on a busy machine.
@pytest.mark.timeout(3600)
@pytest.mark.slow
@pytest.mark.e2e
def test_compiled_pipeline_runs_blessed_pushed_and_matches_the_local_run(tiny_run, tmp_path):
    check_matches_the_local_run(tiny_run, run_compiled(tiny_run[0], tmp_path, "process"))


@pytest.fixture(scope="module")
def podman_root(tmp_path_factory):
    """One pipeline root for the podman runs: the TFJob run takes the tasks it
    shares with the first run from the cache, as KFP would."""
    import shutil

    if not shutil.which("podman"):
        pytest.skip("podman is not installed (apt-get install -y podman runc)")
    engine = os.path.join(os.path.dirname(os.path.dirname(__file__)), "k8s", "image", "engine.sh")
    if subprocess.call([engine, "image", "exists", IMAGE]) != 0:
        pytest.skip(f"no {IMAGE} image: make image")
    return tmp_path_factory.mktemp("podman") / "root"


@pytest.mark.timeout(3600)
@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.podman
def test_compiled_pipeline_runs_in_the_image_with_podman(tiny_run, podman_root, tmp_path):
    check_matches_the_local_run(tiny_run, run_compiled(tiny_run[0], tmp_path, "podman", podman_root))


@pytest.mark.timeout(3600)
@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.podman
def test_a_two_worker_tfjob_trainer_runs_its_pods_as_containers(tiny_run, podman_root, tmp_path):
    from tfx_transfer.modules import contract

    config, summary = tiny_run
    result = run_compiled(config, tmp_path, "podman", podman_root, tfjob_workers=2, image=IMAGE)
    tasks = result["tasks"]
    assert all(t["state"] in ("SUCCEEDED", "CACHED") for t in tasks.values())
    assert tasks["Trainer"]["state"] == "SUCCEEDED"
    check_blessed_and_pushed(config, summary, tasks)
    model_uri = tasks["Trainer"]["outputs"]["artifacts"]["model"]["uri"]
    report = json.load(open(glob.glob(os.path.join(model_uri, "**", contract.TRAINING_REPORT_FILE),
                                      recursive=True)[0]))
    assert report["replicas"] == 2 and report["class_names"] == summary["classes"]
    # two worker pods, each in its own container, met through the operator's TF_CONFIG
    logs = sorted(glob.glob(os.path.join(result["run_dir"], "tfjob", "tfx-trainer-*-worker-*.log")))
    assert len(logs) == 2
    chief, worker = (open(p).read() for p in logs)
    assert "-worker-0.kubeflow.svc:2222" in chief and "-worker-1.kubeflow.svc:2222" in chief
    assert "the chief writes the model" in worker
    assert "group_size = 2" in chief and "group_size = 2" in worker  # TF's collective all-reduce
