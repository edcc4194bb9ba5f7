"""Every Kubernetes manifest under k8s/ validates against the Kubernetes schemas
(kubernetes-validate ships them), every pod runs locked down, every
kustomization points at files that exist, and the TF Serving deployment has
what production needs."""
import glob
import os
import shutil
import subprocess

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K8S = os.path.join(REPO, "k8s")
K8S_VERSION = "1.34.0"
KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
# apiVersion groups whose kinds the schemas must know; anything else is a
# custom resource (Kubeflow TFJob, ...) that only gets the structural checks.
BUILTIN_GROUPS = ("", "apps", "batch", "autoscaling", "policy", "networking.k8s.io",
                  "rbac.authorization.k8s.io", "storage.k8s.io", "scheduling.k8s.io",
                  "coordination.k8s.io", "apiextensions.k8s.io", "admissionregistration.k8s.io")


def _rel(path):
    return os.path.relpath(path, REPO)


def yaml_files():
    return sorted(f for ext in ("yaml", "yml")
                  for f in glob.glob(os.path.join(K8S, "**", f"*.{ext}"), recursive=True))


def kustomization_files():
    return sorted(f for name in KUSTOMIZATION_NAMES
                  for f in glob.glob(os.path.join(K8S, "**", name), recursive=True))


def _load(path):
    with open(path) as f:
        return yaml.safe_load(f) or {}


def _file_refs(kustomization):
    """Local files and folders a kustomization names."""
    k = _load(kustomization)
    refs = list(k.get("resources") or []) + list(k.get("components") or []) + \
        list(k.get("crds") or []) + list(k.get("patchesStrategicMerge") or [])
    refs += [p["path"] for key in ("patches", "patchesJson6902") for p in k.get(key) or []
             if isinstance(p, dict) and "path" in p]
    for key in ("configMapGenerator", "secretGenerator"):
        for gen in k.get(key) or []:
            refs += [f.split("=", 1)[-1] for f in gen.get("files") or []]
            refs += list(gen.get("envs") or []) + ([gen["env"]] if gen.get("env") else [])
    # Remote bases (URLs, git repos) are not checked here.
    return [r for r in refs if isinstance(r, str) and "://" not in r and
            not r.startswith(("github.com/", "git@"))]


def patch_files():
    """Patches are partial objects: validated once applied (test_kustomize_build)."""
    patches = set()
    for kfile in kustomization_files():
        k = _load(kfile)
        names = list(k.get("patchesStrategicMerge") or []) + [
            p["path"] for key in ("patches", "patchesJson6902") for p in k.get(key) or []
            if isinstance(p, dict) and "path" in p]
        patches |= {os.path.normpath(os.path.join(os.path.dirname(kfile), n)) for n in names}
    return patches


def manifest_documents():
    patches = patch_files()
    docs = []
    for path in yaml_files():
        if os.path.basename(path) in KUSTOMIZATION_NAMES or os.path.normpath(path) in patches:
            continue
        with open(path) as f:
            for i, doc in enumerate(yaml.safe_load_all(f)):
                if doc is not None:
                    docs.append(pytest.param(path, doc, id=f"{_rel(path)}#{i}"))
    return docs


def _group(api_version):
    return api_version.split("/")[0] if "/" in api_version else ""


def validate(doc, where):
    assert isinstance(doc, dict), f"{where}: not a mapping"
    for field in ("apiVersion", "kind"):
        assert doc.get(field), f"{where}: no {field}"
    assert (doc.get("metadata") or {}).get("name"), f"{where}: no metadata.name"
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        assert _group(doc["apiVersion"]) not in BUILTIN_GROUPS, \
            f"{where}: {doc['kind']} {doc['apiVersion']} does not exist in Kubernetes {K8S_VERSION}"
    except kubernetes_validate.ValidationError as e:
        pytest.fail(f"{where}: {doc['kind']}/{doc['metadata']['name']}: "
                    f"{'.'.join(map(str, e.path))}: {e.message}")


def pod_specs(obj):
    """Every pod spec inside a document: Deployments, Jobs, CronJobs, TFJob replicas..."""
    if isinstance(obj, dict):
        if isinstance(obj.get("containers"), list):
            yield obj
        for value in obj.values():
            yield from pod_specs(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from pod_specs(value)


def check_pod_security(doc, where):
    for spec in pod_specs(doc):
        pod = spec.get("securityContext") or {}
        assert spec.get("hostNetwork") is not True and spec.get("hostPID") is not True, where
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c.get("securityContext") or {}
            name = f"{where}: container {c.get('name')}"
            assert sc.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, f"{name}: runAsNonRoot"
            assert sc.get("runAsUser", pod.get("runAsUser")) != 0, f"{name}: runs as uid 0"
            assert sc.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation"
            assert sc.get("privileged") is not True, f"{name}: privileged"
            assert sc.get("readOnlyRootFilesystem") is True, f"{name}: readOnlyRootFilesystem"
            assert "ALL" in ((sc.get("capabilities") or {}).get("drop") or []), \
                f"{name}: capabilities.drop must include ALL"
            seccomp = (sc.get("seccompProfile") or pod.get("seccompProfile") or {}).get("type")
            assert seccomp in ("RuntimeDefault", "Localhost"), f"{name}: seccompProfile {seccomp}"


# ---------------------------------------------------------------------------
@pytest.mark.parametrize("path,doc", manifest_documents())
def test_manifest_validates_against_the_kubernetes_schema(path, doc):
    validate(doc, _rel(path))


@pytest.mark.parametrize("path,doc", [p for p in manifest_documents()
                                      if any(True for _ in pod_specs(p.values[1]))])
def test_pods_run_locked_down(path, doc):
    check_pod_security(doc, _rel(path))


@pytest.mark.parametrize("kfile", kustomization_files(), ids=_rel)
def test_kustomization_references_exist(kfile):
    base = os.path.dirname(kfile)
    for ref in _file_refs(kfile):
        target = os.path.join(base, ref)
        assert os.path.exists(target), f"{_rel(kfile)} names {ref}, which does not exist"
        if os.path.isdir(target):
            assert any(os.path.exists(os.path.join(target, n)) for n in KUSTOMIZATION_NAMES), \
                f"{_rel(kfile)} names folder {ref}, which has no kustomization.yaml"


def kustomize(folder):
    kubectl = shutil.which("kubectl")
    cmd = [kubectl, "kustomize", folder] if kubectl else (
        [shutil.which("kustomize"), "build", folder] if shutil.which("kustomize") else None)
    if cmd is None:
        pytest.skip("neither kubectl nor kustomize is installed")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"kustomize {_rel(folder)}: {out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.mark.parametrize("kfile", kustomization_files(), ids=_rel)
def test_kustomize_build(kfile):
    """What kubectl apply -k would send: patches applied, all of it valid and locked down."""
    docs = kustomize(os.path.dirname(kfile))
    assert docs, f"{_rel(kfile)} renders nothing"
    for doc in docs:
        where = f"{_rel(os.path.dirname(kfile))} {doc.get('kind')}/{doc['metadata']['name']}"
        validate(doc, where)
        check_pod_security(doc, where)


# ---------------------------------------------------------------------------
# The TF Serving deployment itself
SERVING = os.path.join(K8S, "serving")


def _by_kind(docs):
    out = {}
    for d in docs:
        out.setdefault(d["kind"], []).append(d)
    return out


def _base_docs():
    k = _load(os.path.join(SERVING, "base", "kustomization.yaml"))
    docs = []
    for name in k["resources"]:
        with open(os.path.join(SERVING, "base", name)) as f:
            docs += [d for d in yaml.safe_load_all(f) if d]
    return docs


def test_serving_base_has_what_production_needs():
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    kinds = _by_kind(_base_docs())
    (deploy,), (hpa,), (config,) = kinds["Deployment"], kinds["HorizontalPodAutoscaler"], \
        kinds["ConfigMap"]
    pod = deploy["spec"]["template"]
    (c,) = pod["spec"]["containers"]
    assert c["image"].startswith("tensorflow/serving:")
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"grpc": 8500, "http": 8501}
    assert {"--port=8500", "--rest_api_port=8501"} <= set(c["args"])
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert probe in c, probe
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind]), kind
    # Model files from the PVC, read-only; /tmp is the one writable path.
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert volumes[mounts["/models"]["name"]]["persistentVolumeClaim"]["readOnly"] is True
    assert mounts["/models"]["readOnly"] is True
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    pvc_names = {d["metadata"]["name"] for d in kinds["PersistentVolumeClaim"]}
    assert volumes[mounts["/models"]["name"]]["persistentVolumeClaim"]["claimName"] in pvc_names

    # The model config TF Serving reads parses, and points into the mounted volume.
    config_mount = next(m for m in c["volumeMounts"]
                        if volumes[m["name"]].get("configMap", {}).get("name") ==
                        config["metadata"]["name"])
    args = dict(a.split("=", 1) for a in c["args"] if "=" in a)
    assert args["--model_config_file"] == f"{config_mount['mountPath']}/models.config"
    assert args["--monitoring_config_file"] == f"{config_mount['mountPath']}/monitoring.config"
    models = text_format.Parse(config["data"]["models.config"],
                               model_server_config_pb2.ModelServerConfig())
    (model,) = models.model_config_list.config
    assert model.name == "classifier" and model.base_path.startswith("/models/")
    probe_path = c["readinessProbe"]["httpGet"]["path"]
    assert probe_path == f"/v1/models/{model.name}/metadata"
    metrics_path = pod["metadata"]["annotations"]["prometheus.io/path"]
    assert f'path: "{metrics_path}"' in config["data"]["monitoring.config"]

    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deploy["metadata"]["name"]}
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    labels = pod["metadata"]["labels"]
    for svc in kinds["Service"]:
        assert svc["spec"]["selector"].items() <= labels.items()
        assert {p["port"] for p in svc["spec"]["ports"]} >= {8500}


@pytest.mark.parametrize("overlay,suffix,gpus", [("cpu", "", 0), ("gpu", "-gpu", 1)])
def test_serving_overlays(overlay, suffix, gpus):
    kinds = _by_kind(kustomize(os.path.join(SERVING, "overlays", overlay)))
    (deploy,) = kinds["Deployment"]
    (c,) = deploy["spec"]["template"]["spec"]["containers"]
    image, tag = c["image"].rsplit(":", 1)
    assert image == "tensorflow/serving" and tag.endswith(suffix) and tag[0].isdigit()
    assert int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) == gpus
    assert ("--enable_batching" in c["args"]) == bool(gpus)
    assert kinds["HorizontalPodAutoscaler"][0]["apiVersion"] == "autoscaling/v2"


def test_serving_object_store_overlay():
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    kinds = _by_kind(kustomize(os.path.join(SERVING, "overlays", "gcs")))
    assert "PersistentVolumeClaim" not in kinds
    pod = kinds["Deployment"][0]["spec"]["template"]["spec"]
    assert not any("persistentVolumeClaim" in v for v in pod["volumes"])
    models = text_format.Parse(kinds["ConfigMap"][0]["data"]["models.config"],
                               model_server_config_pb2.ModelServerConfig())
    assert models.model_config_list.config[0].base_path.startswith("gs://")
