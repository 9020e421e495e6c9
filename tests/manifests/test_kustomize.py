"""The kustomize manifests (manifests/): every overlay renders with `kubectl kustomize` and says what we mean.

Rendering uses a copy of manifests/ in which each overlay's *.env.example is copied to the git-ignored
*.env the overlay reads; real *.env files in the checkout are never copied or read. No cluster is
contacted (render only, never apply).
"""
from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
OVERLAYS = ["local", "gpu-cluster"]
ENV_FILES = ["minio.env", "s3.env"]
KUBECTL = shutil.which("kubectl") or ("/usr/bin/kubectl" if os.access("/usr/bin/kubectl", os.X_OK) else None)
PLACEHOLDER = "CHANGE_ME"
CREDENTIAL_KEYS = {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
CLUSTER_SCOPED = {"Namespace", "PriorityClass", "ClusterRole", "ClusterRoleBinding", "StorageClass"}
BASE_KINDS = {"Namespace", "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Secret", "Service",
              "PersistentVolumeClaim", "Deployment", "Job", "LimitRange"}

pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl not installed (needed for `kubectl kustomize`)")


def kustomize(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=120)


def render(path: Path) -> list[dict]:
    res = kustomize(path)
    assert res.returncode == 0, f"kubectl kustomize {path} failed:\n{res.stderr}"
    return [d for d in yaml.safe_load_all(res.stdout) if d]


def example_copy(dest: Path) -> Path:
    """manifests/ copied to `dest` without any real *.env, with the examples in their place."""
    shutil.copytree(MANIFESTS, dest, ignore=shutil.ignore_patterns("*.env"))
    for overlay in OVERLAYS:
        for name in ENV_FILES:
            shutil.copyfile(dest / "overlays" / overlay / f"{name}.example", dest / "overlays" / overlay / name)
    return dest


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return example_copy(tmp_path_factory.mktemp("kustomize") / "manifests")


@pytest.fixture(scope="module")
def rendered(tree) -> dict[str, list[dict]]:
    return {overlay: render(tree / "overlays" / overlay) for overlay in OVERLAYS}


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_specs(docs: list[dict]):
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield d, d["spec"]["template"]["spec"]
        elif d["kind"] == "Pod":
            yield d, d["spec"]


def secret_values(secret: dict) -> dict[str, str]:
    out = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    out.update(secret.get("stringData") or {})
    return out


# ------------------------------------------------------------------------------------------------------
# rendering and secrets handling
# ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_expected_kinds(rendered, overlay):
    docs = rendered[overlay]
    kinds = {d["kind"] for d in docs}
    assert BASE_KINDS <= kinds, f"missing: {sorted(BASE_KINDS - kinds)}"
    if overlay == "gpu-cluster":
        assert {"ResourceQuota", "PriorityClass"} <= kinds
    else:
        assert not {"ResourceQuota", "PriorityClass"} & kinds
    (ns,) = by_kind(docs, "Namespace")
    for d in docs:
        if d["kind"] not in CLUSTER_SCOPED:
            assert d["metadata"].get("namespace") == ns["metadata"]["name"], f"{d['kind']}/{d['metadata']['name']}"
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names))


def test_namespace_is_set_by_the_overlay(tmp_path):
    """Changing an overlay's `namespace:` moves everything, RoleBinding subjects included."""
    tree = example_copy(tmp_path / "manifests")
    kfile = tree / "overlays" / "local" / "kustomization.yaml"
    text, n = re.subn(r"(?m)^namespace: oseg3d\b", "namespace: team-x", kfile.read_text())
    assert n == 1
    kfile.write_text(text)
    docs = render(tree / "overlays" / "local")
    assert [d["metadata"]["name"] for d in by_kind(docs, "Namespace")] == ["team-x"]
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] not in CLUSTER_SCOPED} == {"team-x"}
    rb = one(docs, "RoleBinding", "oseg3d-pipeline-runner")
    assert [s["namespace"] for s in rb["subjects"]] == ["team-x"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_real_overlay_needs_its_env_files(overlay):
    """Without the git-ignored env files the real overlay does not render (no silent placeholder secrets)."""
    odir = MANIFESTS / "overlays" / overlay
    if any((odir / name).exists() for name in ENV_FILES):
        pytest.skip(f"{overlay}: real env files present in this checkout")
    res = kustomize(odir)
    assert res.returncode != 0
    assert re.search(r"(minio|s3)\.env", res.stderr), res.stderr


def test_env_files_are_git_ignored():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    real = [f"manifests/overlays/{o}/{n}" for o in OVERLAYS for n in ENV_FILES]
    res = subprocess.run(["git", "check-ignore", *real], cwd=ROOT, capture_output=True, text=True)
    assert sorted(res.stdout.split()) == sorted(real)
    examples = [f"{p}.example" for p in real]
    res = subprocess.run(["git", "check-ignore", *examples], cwd=ROOT, capture_output=True, text=True)
    assert res.stdout.split() == [], "the *.env.example templates must be committed"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_carry_only_placeholders(rendered, overlay):
    docs = rendered[overlay]
    secrets = {s["metadata"]["name"]: secret_values(s) for s in by_kind(docs, "Secret")}
    assert set(secrets) == {"oseg3d-minio-root", "oseg3d-s3"}
    assert {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"} <= set(secrets["oseg3d-minio-root"])
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "OSEG3D_S3_ENDPOINT"} <= set(secrets["oseg3d-s3"])
    for name, values in secrets.items():
        for key, value in values.items():
            if key in CREDENTIAL_KEYS:
                assert value.startswith(PLACEHOLDER), f"{name}.{key} is not a placeholder"
    # The store the pipeline pods use is the in-namespace MinIO Service.
    svc = one(docs, "Service", "oseg3d-minio")
    port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "s3")
    assert secrets["oseg3d-s3"]["OSEG3D_S3_ENDPOINT"] == f"http://oseg3d-minio:{port}"


def _repo_manifest_files() -> list[Path]:
    """Files under manifests/ that git would commit (tracked or not ignored); never the real *.env."""
    if shutil.which("git") and (ROOT / ".git").exists():
        res = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "manifests"], cwd=ROOT,
                             capture_output=True, text=True, check=True)
        return [ROOT / p for p in res.stdout.split()]
    return [p for p in MANIFESTS.rglob("*") if p.is_file() and p.suffix != ".env"]


def test_no_credentials_in_repo_manifests():
    files = _repo_manifest_files()
    assert files and not any(p.suffix == ".env" for p in files)
    real_looking = [
        re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),                          # AWS access key id
        re.compile(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"),  # AWS-style secret key
        re.compile(r"\bminioadmin\b"),                                      # MinIO's default credentials
        re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    ]
    for path in files:
        text = path.read_text()
        for pat in real_looking:
            assert not pat.search(text), f"{path.relative_to(ROOT)}: looks like a credential ({pat.pattern})"
        if path.suffix in (".yaml", ".yml"):
            for doc in yaml.safe_load_all(text):
                if isinstance(doc, dict):
                    assert doc.get("kind") != "Secret", f"{path.relative_to(ROOT)}: a Secret object in the repo"
        if path.name.endswith(".env.example"):
            for line in text.splitlines():
                key, _, value = line.partition("=")
                if key.strip() in CREDENTIAL_KEYS:
                    assert value.strip().startswith(PLACEHOLDER), f"{path.relative_to(ROOT)}: {key} not a placeholder"


# ------------------------------------------------------------------------------------------------------
# workloads: MinIO, images, security contexts
# ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_minio_runs_as_non_root_with_pinned_image(rendered, overlay):
    docs = rendered[overlay]
    dep = one(docs, "Deployment", "oseg3d-minio")
    spec = dep["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec.get("automountServiceAccountToken") is False
    (c,) = spec["containers"]
    image, _, tag = c["image"].rpartition(":")
    assert image.endswith("minio/minio") and tag.startswith("RELEASE."), c["image"]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/minio/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/minio/health/live"
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    assert c["resources"]["limits"]["memory"]
    env = {e["name"]: e for e in c["env"]}
    for key in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"):
        assert "value" not in env[key]
        assert env[key]["valueFrom"]["secretKeyRef"]["name"] == "oseg3d-minio-root"
    claim = next(v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v)
    one(docs, "PersistentVolumeClaim", claim)
    assert dep["spec"]["strategy"]["type"] == "Recreate"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_pinned_and_non_root(rendered, overlay):
    for d, spec in pod_specs(rendered[overlay]):
        assert spec["securityContext"]["runAsNonRoot"] is True, d["metadata"]["name"]
        for c in spec.get("initContainers", []) + spec["containers"]:
            image = c["image"]
            assert ":" in image.rsplit("/", 1)[-1] or "@sha256:" in image, f"unpinned image {image}"
            assert not image.endswith(":latest"), image
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            for e in c.get("env", []):
                if e["name"] in CREDENTIAL_KEYS:
                    assert "secretKeyRef" in e.get("valueFrom", {}), f"{e['name']} not from a Secret"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_minio_setup_job_wiring(rendered, overlay):
    docs = rendered[overlay]
    job = one(docs, "Job", "oseg3d-minio-setup")
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["image"].rpartition(":")[0].endswith("minio/mc")
    refs = {(e["valueFrom"].get("secretKeyRef") or e["valueFrom"].get("configMapKeyRef"))["name"]
            for e in c["env"] if "valueFrom" in e}
    assert refs == {"oseg3d-minio-root", "oseg3d-s3", "kfp-launcher"}
    assert PLACEHOLDER in c["args"][0], "the Job must refuse placeholder credentials"


# ------------------------------------------------------------------------------------------------------
# KFP pipeline root
# ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kfp_launcher_points_at_our_minio(rendered, overlay):
    docs = rendered[overlay]
    cm = one(docs, "ConfigMap", "kfp-launcher")
    root = cm["data"]["defaultPipelineRoot"]
    assert re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/[\w./-]+", root), root
    default = yaml.safe_load(cm["data"]["providers"])["s3"]["default"]
    svc = one(docs, "Service", "oseg3d-minio")
    port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "s3")
    assert default["endpoint"] == f"{svc['metadata']['name']}:{port}"
    assert default["disableSSL"] is True and default["forcePathStyle"] is True
    creds = default["credentials"]
    assert creds["fromEnv"] is False
    ref = creds["secretRef"]
    secret = secret_values(one(docs, "Secret", ref["secretName"]))
    assert ref["accessKeyKey"] in secret and ref["secretKeyKey"] in secret


# ------------------------------------------------------------------------------------------------------
# RBAC
# ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_is_namespaced_and_least_privilege(rendered, overlay):
    docs = rendered[overlay]
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    for role in by_kind(docs, "Role"):
        for rule in role["rules"]:
            for field in ("verbs", "resources", "apiGroups", "resourceNames"):
                assert "*" not in rule.get(field, []), f"{role['metadata']['name']}: '*' in {field}"
            if "secrets" in rule["resources"] or "configmaps" in rule["resources"]:
                assert rule.get("resourceNames"), "secrets/configmaps only by name"
                assert set(rule["verbs"]) == {"get"}
            assert not {"delete", "deletecollection", "escalate", "bind", "impersonate"} & set(rule["verbs"])
            if rule["apiGroups"] == [""]:
                assert set(rule["verbs"]) <= {"get", "watch", "list"}, rule
    secret_names = {s["metadata"]["name"] for s in by_kind(docs, "Secret")}
    readable = {n for r in by_kind(docs, "Role") for rule in r["rules"] if "secrets" in rule["resources"]
                for n in rule["resourceNames"]}
    assert "oseg3d-s3" in readable and "oseg3d-minio-root" not in readable
    assert readable - secret_names <= {"mlpipeline-minio-artifact"}
    sa = one(docs, "ServiceAccount", "oseg3d-pipeline-runner")
    rb = one(docs, "RoleBinding", "oseg3d-pipeline-runner")
    assert rb["roleRef"]["kind"] == "Role"
    one(docs, "Role", rb["roleRef"]["name"])
    assert rb["subjects"] == [{"kind": "ServiceAccount", "name": "oseg3d-pipeline-runner",
                               "namespace": sa["metadata"]["namespace"]}]


# ------------------------------------------------------------------------------------------------------
# storage and GPU scheduling
# ------------------------------------------------------------------------------------------------------

def test_scannet_pvc_per_overlay(rendered):
    local = one(rendered["local"], "PersistentVolumeClaim", "scannet-data")["spec"]
    assert local["accessModes"] == ["ReadWriteOnce"] and local["storageClassName"] == "standard"
    cluster = one(rendered["gpu-cluster"], "PersistentVolumeClaim", "scannet-data")["spec"]
    assert cluster["accessModes"] == ["ReadWriteMany"] and cluster["storageClassName"]

    def size(spec):
        q = spec["resources"]["requests"]["storage"]
        return int(q[:-2]) * {"Gi": 1, "Ti": 1024}[q[-2:]]

    assert size(local) < size(cluster)


GPU_RESOURCE = "nvidia.com/gpu"
GPU_LABEL = ("nvidia.com/gpu.present", "true")
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def test_gpu_cluster_quota_priority_and_conventions(rendered):
    docs = rendered["gpu-cluster"]
    (quota,) = by_kind(docs, "ResourceQuota")
    assert int(quota["spec"]["hard"][f"requests.{GPU_RESOURCE}"]) >= 1
    pc = one(docs, "PriorityClass", "oseg3d-training")
    assert pc["preemptionPolicy"] == "Never" and pc["globalDefault"] is False

    smoke = one(docs, "Job", "oseg3d-gpu-smoke")["spec"]["template"]["spec"]
    assert smoke["nodeSelector"] == dict([GPU_LABEL])
    assert GPU_TOLERATION in smoke["tolerations"]
    assert smoke["priorityClassName"] == pc["metadata"]["name"]
    (c,) = smoke["containers"]
    assert int(c["resources"]["limits"][GPU_RESOURCE]) == 1
    shm = next(m for m in c["volumeMounts"] if m["mountPath"] == "/dev/shm")
    vol = next(v for v in smoke["volumes"] if v["name"] == shm["name"])
    assert vol["emptyDir"]["medium"] == "Memory"

    minio = one(docs, "Deployment", "oseg3d-minio")["spec"]["template"]["spec"]
    terms = minio["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert {"key": GPU_LABEL[0], "operator": "DoesNotExist"} in terms[0]["matchExpressions"]
    assert GPU_TOLERATION not in minio.get("tolerations", [])


def test_local_overlay_has_no_gpu_scheduling(rendered):
    docs = rendered["local"]
    for d, spec in pod_specs(docs):
        assert "tolerations" not in spec and "nodeSelector" not in spec and "affinity" not in spec
        for c in spec["containers"]:
            assert GPU_RESOURCE not in c.get("resources", {}).get("limits", {})


def test_pipeline_uses_the_same_names():
    """The pipeline's cluster options (pipelines/cluster.py) match what the manifests provide."""
    try:
        from pipelines.cluster import S3_ENV, ClusterOptions
    except ImportError as e:
        pytest.skip(f"pipelines.cluster not importable: {e}")
    opts = ClusterOptions()
    assert opts.gpu_resource == GPU_RESOURCE
    assert tuple(opts.gpu_node_label) == GPU_LABEL
    assert opts.gpu_toleration == GPU_TOLERATION["key"]
    assert opts.s3_secret == "oseg3d-s3"
    example = (MANIFESTS / "overlays" / "local" / "s3.env.example").read_text()
    keys = {ln.partition("=")[0] for ln in example.splitlines() if "=" in ln and not ln.startswith("#")}
    assert set(S3_ENV) <= keys
