"""Security checks over the source tree and the compiled pipeline: no unpickling of anything read from
storage, torch checkpoints only with weights_only=True, credentials only from the environment (Kubernetes
Secrets on a cluster) and never in the tree or the compiled pipeline, images that run as a non-root user.

Run-time counterparts: a pickled checkpoint is refused (tests/engine/test_weights_optim.py::
test_lightning_checkpoint_is_read_weights_only, tests/clip/test_conv1.py::
test_arbitrary_pickles_are_not_unpickled), the image really runs as UID 1000
(tests/images/test_docker_image.py), the rendered manifests are non-root with namespaced least-privilege
RBAC (tests/manifests/test_kustomize.py).
"""
from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CREDENTIAL_VARS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MINIO_ROOT_USER",
                   "MINIO_ROOT_PASSWORD"}


def _tree_files() -> list[Path]:
    """Files git would commit (tracked, or untracked and not ignored): never the ignored real *.env files."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    return [ROOT / p for p in out if (ROOT / p).is_file()]


def _python_files() -> list[Path]:
    return [p for p in _tree_files() if p.suffix == ".py"]


def _call_name(node: ast.Call) -> str:
    """Dotted name of the called function: ``torch.load``, ``pickle.loads``, ``fit``, ..."""
    parts, f = [], node.func
    while isinstance(f, ast.Attribute):
        parts.append(f.attr)
        f = f.value
    if isinstance(f, ast.Name):
        parts.append(f.id)
    return ".".join(reversed(parts))


def _kwarg(node: ast.Call, name: str):
    return next((k.value for k in node.keywords if k.arg == name), None)


def _is_true(value) -> bool:
    return isinstance(value, ast.Constant) and value.value is True


def _unsafe_loads(tree: ast.AST) -> list[str]:
    """Deserialising calls that can run code from the data they read."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            if any(n and n.split(".")[0] in ("dill", "cloudpickle", "joblib", "shelve", "marshal") for n in names):
                found.append(f"line {node.lineno}: imports an unpickler ({', '.join(filter(None, names))})")
            if isinstance(node, ast.ImportFrom) and node.module == "pickle" and \
                    {a.name for a in node.names} & {"load", "loads", "Unpickler"}:
                found.append(f"line {node.lineno}: imports pickle.load(s)")
        if not isinstance(node, ast.Call):
            continue
        name = _call_name(node)
        last = name.rsplit(".", 1)[-1]
        where = f"line {node.lineno}: {name}(...)"
        if name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "cPickle.load", "cPickle.loads",
                    "pd.read_pickle", "pandas.read_pickle", "torch.jit.load", "jit.load", "yaml.unsafe_load",
                    "yaml.full_load") or isinstance(node.func, ast.Name) and name in ("eval", "exec"):
            found.append(where)
        elif name.endswith("torch.load") or name == "load" and _kwarg(node, "map_location") is not None:
            if not _is_true(_kwarg(node, "weights_only")):
                found.append(f"{where} without weights_only=True")
        elif last == "load" and name.split(".")[0] in ("np", "numpy") and _kwarg(node, "allow_pickle") is not None:
            if not (isinstance(_kwarg(node, "allow_pickle"), ast.Constant) and not _kwarg(node, "allow_pickle").value):
                found.append(f"{where} with allow_pickle")
        elif name == "yaml.load" and "Safe" not in ast.unparse(_kwarg(node, "Loader") or ast.Constant(None)):
            found.append(f"{where} without a SafeLoader")
        elif last in ("fit", "validate", "test", "predict") and _kwarg(node, "ckpt_path") is not None:
            # Lightning restores ckpt_path with torch.load: the same rule as torch.load
            if not _is_true(_kwarg(node, "weights_only")):
                found.append(f"{where} restores ckpt_path without weights_only=True")
    return found


def test_no_pickle_is_ever_loaded_and_torch_load_is_weights_only():
    files = _python_files()
    assert len(files) > 50
    problems, torch_loads = [], 0
    for path in files:
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text, filename=str(path))
        torch_loads += sum(isinstance(n, ast.Call) and _call_name(n).endswith("torch.load") for n in ast.walk(tree))
        problems += [f"{path.relative_to(ROOT)} {p}" for p in _unsafe_loads(tree)]
    assert problems == []
    assert torch_loads >= 3  # the scan sees the real calls (engine/weights.py, clip/conv1.py, tests)


def test_the_scan_catches_what_it_forbids():
    bad = """
import pickle, torch, yaml, numpy as np
pickle.loads(b)
torch.load(f)
torch.load(f, weights_only=False)
np.load(f, allow_pickle=True)
yaml.load(s, Loader=yaml.Loader)
trainer.fit(m, ckpt_path=p)
eval(s)
"""
    good = """
import torch, yaml
torch.load(f, map_location="cpu", weights_only=True)
yaml.load(s, Loader=yaml.SafeLoader)
yaml.safe_load(s)
trainer.fit(m, ckpt_path=p, weights_only=True)
model.eval()
"""
    assert len(_unsafe_loads(ast.parse(bad))) == 7
    assert _unsafe_loads(ast.parse(good)) == []


# ------------------------------------------------------------------------------------------------ secrets

_SECRET_PATTERNS = [
    ("AWS access key id", re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("MinIO default credentials", re.compile(r"minioadmin", re.I)),
    ("private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
    ("credential variable with a value",
     re.compile(r"\b(?:" + "|".join(sorted(CREDENTIAL_VARS)) + r")\b\s*[=:]\s*(?![\s\"']*(?:\$|\{|<|CHANGE_ME|$))"
                r"[\"']?[^\s\"'$]+", re.M)),
    ("password/secret/token literal",
     re.compile(r"(?i)\b\w*(?:password|passwd|secret|token|api_key)\w*\s*[=:]\s*"
                r"[\"'](?!CHANGE_ME|\$|\{|<)[^\"'\s]{4,}[\"']")),
]
_B64_40 = re.compile(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")  # AWS-style secret key


def _secrets_in(text: str) -> list[str]:
    hits = [f"{name}: {m.group(0)[:12]}…" for name, pat in _SECRET_PATTERNS for m in pat.finditer(text)]
    for m in _B64_40.finditer(text):  # mixed case and digits: not a hex digest or a word
        tok = m.group(0)
        if re.search(r"[A-Z]", tok) and re.search(r"[a-z]", tok) and re.search(r"\d", tok):
            hits.append(f"AWS-style secret key: {tok[:6]}…")
    return hits


def test_no_secret_in_the_tree():
    """Tests hold dummy credentials for the local test server, *.env.example files placeholders: both are
    exempt; everything else git would commit is scanned (code, docs, manifests, images, CI)."""
    scanned, problems = 0, []
    for path in _tree_files():
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("tests/") or rel.endswith(".example"):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary
        scanned += 1
        problems += [f"{rel}: {h}" for h in _secrets_in(text)]
    assert scanned > 100 and problems == []


def test_the_secret_scan_catches_planted_credentials():
    key_id = "AKIA" + "IOSFODNN7" + "EXAMPLE"  # AWS's documentation example, assembled so the tree never holds it
    secret = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYEXAMPLEKEY"
    planted = [f"aws_access_key_id = {key_id}", f'AWS_SECRET_ACCESS_KEY="{secret}"', "MINIO_ROOT_PASSWORD: hunter22",
               "user=" + "minio" + "admin", 'db_password = "s3cr3t-value"']
    for text in planted:
        assert _secrets_in(text), text
    for fine in ['AWS_SECRET_ACCESS_KEY=CHANGE_ME_secret', 'env AWS_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY"',
                 "secretKey: AWS_SECRET_ACCESS_KEY", "sha 4f2b0c9d8e7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c"]:
        assert not _secrets_in(fine), fine


@pytest.mark.parametrize("pipeline", ["route1", "routes"])
def test_compiled_pipeline_holds_no_secret_and_takes_credentials_from_a_kubernetes_secret(tmp_path, pipeline):
    from pipelines.local import compile_to

    text = open(compile_to(str(tmp_path / "p.yaml"), pipeline=pipeline)).read()
    assert _secrets_in(text) == []
    docs = list(yaml.safe_load_all(text))
    executors = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    wired = 0
    for name, spec in executors.items():
        for secret in spec.get("secretAsEnv", []):
            wired += 1
            assert {m["envVar"] for m in secret["keyToEnv"]} >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}, name
    assert wired > 0

    def walk(node, path="") -> None:  # no container env sets a credential to a value
        if isinstance(node, dict):
            if node.get("name") in CREDENTIAL_VARS:
                assert "value" not in node, f"{path}: {node['name']} has a literal value"
            for k, v in node.items():
                assert not (k in CREDENTIAL_VARS and isinstance(v, str) and v not in CREDENTIAL_VARS), f"{path}.{k}"
                walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    walk(docs)


def test_credentials_are_read_from_the_environment_in_one_place():
    """Only oseg3d/storage/s3.py builds an S3 client, from os.environ; no other code passes keys around."""
    makers = []
    for path in _python_files():
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("tests/"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and (_call_name(node).split(".")[-1] in ("Minio", "client", "resource")
                                               and _call_name(node).split(".")[0] in ("Minio", "boto3", "minio")):
                makers.append(rel)
            if isinstance(node, ast.Call) and any(k.arg in ("secret_key", "aws_secret_access_key", "password")
                                                  for k in node.keywords):
                makers.append(rel)
    assert set(makers) == {"lib/oseg3d/storage/s3.py"}
    s3_py = (ROOT / "lib/oseg3d/storage/s3.py").read_text()
    assert 'os.environ.get("AWS_SECRET_ACCESS_KEY"' in s3_py and 'os.environ.get("AWS_ACCESS_KEY_ID"' in s3_py


# ----------------------------------------------------------------------------------------------- images

def _last_user(dockerfile: Path) -> tuple[str, dict[str, str]]:
    """The USER of the final stage and the ARG defaults it may refer to."""
    user, args = "", {}
    for line in dockerfile.read_text().splitlines():
        tok = line.strip().split(None, 1)
        if not tok:
            continue
        if tok[0].upper() == "FROM":
            user = ""  # each stage starts as the base image's user
        elif tok[0].upper() == "ARG" and len(tok) > 1 and "=" in tok[1]:
            k, _, v = tok[1].partition("=")
            args[k.strip()] = v.strip()
        elif tok[0].upper() == "USER" and len(tok) > 1:
            user = tok[1].strip()
    return user, args


@pytest.mark.parametrize("dockerfile", sorted((ROOT / "images").glob("*Dockerfile")), ids=lambda p: p.name)
def test_images_end_as_a_numeric_non_root_user(dockerfile):
    user, args = _last_user(dockerfile)
    assert user, f"{dockerfile.name}: the final stage sets no USER (it would run as the base image's root)"
    resolved = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), user)
    uid = resolved.split(":")[0]
    assert uid.isdigit(), f"{dockerfile.name}: USER {user} is not numeric (Kubernetes runAsNonRoot needs a UID)"
    assert int(uid) != 0 and resolved.split(":")[-1] != "0", f"{dockerfile.name}: USER {user} is root"
