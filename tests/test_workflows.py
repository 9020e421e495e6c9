"""The GitHub Actions workflow that compiles the pipeline and submits it to KFP (.github/workflows/pipeline.yaml).

Checks its structure (compile, upload, then submit), that the endpoint and token come only from secrets, and
that the `kfp run create` command it runs is accepted by the installed kfp CLI: the flags appear in the
CLI's help, and the exact argv the submit script produces (run here with a stand-in `kfp` on PATH) parses
with the CLI's own click commands. Nothing contacts a KFP server.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "pipeline.yaml"
CREDENTIAL_URL = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.I)


@pytest.fixture(scope="module")
def wf() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def _on(wf: dict) -> dict:
    return wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` key as True


def _step(job: dict, *, name: str | None = None, uses: str | None = None) -> dict:
    for s in job["steps"]:
        if (name and s.get("name") == name) or (uses and s.get("uses", "").startswith(uses)):
            return s
    raise AssertionError(f"no step {name or uses!r}")


def _strings(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)
    elif isinstance(node, str):
        yield node


def _kfp_command(script: str) -> list[str]:
    """The `kfp ...` command of a run script, line continuations joined, split like the shell would."""
    joined = re.sub(r"\\\n\s*", " ", script)
    line = next(ln.strip() for ln in joined.splitlines() if ln.strip().startswith("kfp "))
    return shlex.split(line)


def test_triggers(wf):
    on = _on(wf)
    assert on["push"]["branches"] == ["main"]
    assert "pull_request" in on
    assert "workflow_dispatch" in on
    assert wf["permissions"] == {"contents": "read"}


def test_compiles_uploads_then_submits(wf):
    compile_job, submit_job = wf["jobs"]["compile"], wf["jobs"]["submit"]
    steps = [s.get("uses", s.get("run", "")) for s in compile_job["steps"]]
    i_checkout = next(i for i, s in enumerate(steps) if s.startswith("actions/checkout@"))
    i_python = next(i for i, s in enumerate(steps) if s.startswith("actions/setup-python@"))
    i_install = next(i for i, s in enumerate(steps) if "pip install -e ." in s)
    i_compile = next(i for i, s in enumerate(steps) if "oseg3d pipeline compile -o pipeline.yaml" in s)
    i_upload = next(i for i, s in enumerate(steps) if s.startswith("actions/upload-artifact@"))
    assert i_checkout < i_python < i_install < i_compile < i_upload
    assert str(compile_job["steps"][i_python]["with"]["python-version"]) == "3.11"
    upload = compile_job["steps"][i_upload]["with"]
    assert upload["path"] == "pipeline.yaml"

    assert submit_job["needs"] == "compile"
    cond = submit_job["if"]
    assert "workflow_dispatch" in cond and "refs/heads/main" in cond
    download = _step(submit_job, uses="actions/download-artifact@")["with"]
    assert download["name"] == upload["name"]
    argv = _kfp_command(_step(submit_job, name="Submit the run")["run"])
    assert argv[argv.index("--package-file") + 1] == "pipeline.yaml"
    assert argv[argv.index("--experiment-name") + 1] == "oseg3d"


def test_installs_the_kfp_the_package_pins(wf):
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    kfp_spec = next(d for d in deps if re.match(r"kfp\b(?![-_])", d))
    install = _step(wf["jobs"]["submit"], name="Install the KFP CLI")["run"]
    assert f'pip install "{kfp_spec}"' in install


def test_endpoint_and_token_only_from_secrets(wf):
    env = wf["jobs"]["submit"]["env"]
    assert env["KFP_ENDPOINT"] == "${{ secrets.KFP_ENDPOINT }}"
    assert env["KFP_EXISTING_TOKEN"] == "${{ secrets.KFP_TOKEN }}"
    for s in _strings(wf):
        assert not CREDENTIAL_URL.search(s), f"URL with credentials in the workflow: {s!r}"
        assert not re.search(r"https?://", s), f"literal endpoint URL in the workflow: {s!r}"
    # The endpoint appears on the command line only as the variable, and no token flag is used.
    argv = _kfp_command(_step(wf["jobs"]["submit"], name="Submit the run")["run"])
    assert argv[argv.index("--endpoint") + 1] == "$KFP_ENDPOINT"
    assert "--existing-token" not in argv
    # Secrets are only ever read into env: values, never spliced into a script.
    text = WORKFLOW.read_text()
    for m in re.finditer(r"\$\{\{\s*secrets\.(\w+)", text):
        line = text[text.rfind("\n", 0, m.start()) + 1: text.find("\n", m.end())]
        assert re.match(r"\s*[A-Z_]+:\s*\$\{\{\s*secrets\.", line), f"secret used outside env: {line!r}"


def test_no_expressions_inside_scripts(wf):
    """`${{ }}` in a run: script is a script-injection hole for workflow_dispatch inputs."""
    for job in wf["jobs"].values():
        for s in job["steps"]:
            assert "${{" not in s.get("run", ""), f"expression inside the script of step {s.get('name')!r}"


def test_kfp_flags_exist_in_the_installed_cli(wf):
    """Every flag of the command is in the installed CLI's help (`kfp --help`, `kfp run create --help`)."""
    from click.testing import CliRunner
    from kfp.cli import run as kfp_run

    kfp = shutil.which("kfp", path=str(Path(sys.executable).parent)) or shutil.which("kfp")
    if kfp is None:
        pytest.skip("kfp CLI not installed")
    top_help = subprocess.run([kfp, "--help"], capture_output=True, text=True, timeout=120, check=True).stdout
    # `kfp run create --help` connects to a server before printing (the top-level group builds its client
    # first), so the subcommand's help is taken from the same click command without the group.
    res = CliRunner().invoke(kfp_run.run, ["create", "--help"])
    assert res.exit_code == 0, res.output
    create_help = res.output

    argv = _kfp_command(_step(wf["jobs"]["submit"], name="Submit the run")["run"])
    assert argv[:1] == ["kfp"] and argv[argv.index("run") + 1] == "create"
    i_run = argv.index("run")
    global_flags = [a for a in argv[1:i_run] if a.startswith("-")]
    create_flags = [a for a in argv[i_run + 2:] if a.startswith("-")]
    assert global_flags == ["--endpoint"]
    assert {"--experiment-name", "--package-file", "--run-name"} <= set(create_flags)
    for flag in global_flags:
        assert re.search(rf"(^|\s){re.escape(flag)}\b", top_help), f"{flag} not in `kfp --help`"
    for flag in create_flags:
        assert re.search(rf"(^|\s){re.escape(flag)}\b", create_help), f"{flag} not in `kfp run create --help`"


def test_token_env_var_is_read_by_the_cli(monkeypatch):
    """KFP_EXISTING_TOKEN reaches --existing-token: the CLI's entry point uses click's KFP_ env prefix."""
    import inspect

    import click
    from kfp.cli import __main__ as kfp_main
    from kfp.cli import cli as kfp_cli

    assert "auto_envvar_prefix='KFP'" in inspect.getsource(kfp_main.main).replace('"', "'")
    opt = next(p for p in kfp_cli.cli.params if p.name == "existing_token")
    monkeypatch.setenv("KFP_EXISTING_TOKEN", "tok")
    ctx = click.Context(kfp_cli.cli, auto_envvar_prefix="KFP")
    assert opt.resolve_envvar_value(ctx) == "tok"


@pytest.fixture(scope="module")
def submitted_argv(wf, tmp_path_factory) -> tuple[list[str], Path]:
    """Run the submit script with a stand-in `kfp` that records its argv; returns (argv, workdir)."""
    if shutil.which("bash") is None:
        pytest.skip("bash not available")
    tmp = tmp_path_factory.mktemp("submit")
    bindir = tmp / "bin"
    bindir.mkdir()
    record = tmp / "argv.json"
    fake = bindir / "kfp"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n")
    fake.chmod(0o755)
    (tmp / "pipeline.yaml").write_text("pipelineInfo: {name: stand-in}\n")
    env = {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp),
           "KFP_ENDPOINT": "https://kfp.invalid/pipeline", "GITHUB_SHA": "0123456789abcdef",
           "GITHUB_RUN_ID": "42", "GITHUB_RUN_ATTEMPT": "1",
           "RAW_URI": "", "SYNTH_SCENES": "2", "SV_CONFIG": "", "MV_CONFIG": "ESAM_online_3d_scannet200",
           "GPUS": "1"}
    script = _step(wf["jobs"]["submit"], name="Submit the run")["run"]
    # GitHub runs `run:` scripts with `bash -e {0}`
    subprocess.run(["bash", "-e", "-c", script], cwd=tmp, env=env, check=True, timeout=60)
    return ["kfp", *json.loads(record.read_text())], tmp


def test_submitted_argv_parses_with_the_installed_cli(submitted_argv):
    """The exact argv (as bash expands it) is accepted by the kfp CLI's click commands (parsed, not run)."""
    from kfp.cli import cli as kfp_cli
    from kfp.cli import run as kfp_run

    argv, workdir = submitted_argv
    i_run = argv.index("run")
    assert argv[i_run + 1] == "create"
    group_ctx = kfp_cli.cli.make_context("kfp", argv[1:i_run] + ["run"], obj={})
    assert group_ctx.params["endpoint"] == "https://kfp.invalid/pipeline"
    cwd = os.getcwd()
    os.chdir(workdir)  # --package-file must exist
    try:
        ctx = kfp_run.create.make_context("create", argv[i_run + 2:])
    finally:
        os.chdir(cwd)
    assert ctx.params["experiment_name"] == "oseg3d"
    assert ctx.params["package_file"] == "pipeline.yaml"
    assert ctx.params["run_name"] == "oseg3d-0123456-42-1"
    # Pipeline parameters: key=value, empty inputs left out (the pipeline's defaults apply).
    assert ctx.params["args"] == ("synth_scenes=2", "mv_config=ESAM_online_3d_scannet200", "gpus=1")


def test_parameters_are_pipeline_inputs(wf, tmp_path):
    """The key=value names the workflow can pass are inputs of the pipeline `oseg3d pipeline compile` writes."""
    script = _step(wf["jobs"]["submit"], name="Submit the run")["run"]
    keys = re.findall(r'"(\w+)=\$\w+"', script)
    assert keys, "no key=value parameters in the submit script"
    dispatch = _on(wf)["workflow_dispatch"]["inputs"]
    assert set(keys) == set(dispatch), "every dispatch input is passed, and only those"

    out = tmp_path / "pipeline.yaml"
    exe = Path(sys.executable).parent / "oseg3d"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "oseg3d.cli"]
    res = subprocess.run([*cmd, "pipeline", "compile", "-o", str(out)], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    if res.returncode != 0 and "No such command" in res.stderr + res.stdout:
        pytest.skip("`oseg3d pipeline compile` is not available in this checkout yet")
    assert res.returncode == 0, res.stderr[-2000:]
    ir = next(d for d in yaml.safe_load_all(out.read_text()) if d)
    inputs = set(ir["root"]["inputDefinitions"]["parameters"])
    assert set(keys) <= inputs, f"not pipeline inputs: {sorted(set(keys) - inputs)}"
