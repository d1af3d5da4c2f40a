"""Every `dfp` command ends its stdout with one JSON line, in success and in failure
(``{"error": ..., "exit_code": ...}``), and its stderr with the one error line. The commands
are read from the CLI itself, so a new command without a case here fails the test.

Success is run here for the quick commands; test_no_secret_on_argv runs transform, train,
score, kserve and serve to success and parses their JSON lines; the long ones end with a parsed
JSON line in their own suites: quickstart (test_quickstart), pipeline run-local (test_pipeline),
reproduce (test_reproduce), evaluate and feast apply (test_training), retarget and drift
(test_model_artifact), diff (test_dfp_diff), cluster up and load-images (test_k8s_node, root only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import typer

from dfp_app.cli import app
from tests.argv_watch import WATCHED_COMMANDS
from dfp_core.stack import free_port

DFP = [sys.executable, "-m", "dfp_app.cli"]
LONG = {"quickstart", "pipeline run-local", "reproduce", "evaluate", "feast apply", "retarget", "drift", "diff",
        "cluster up", "cluster load-images"}  # the node's: test_k8s_node


def _commands(group: typer.Typer = app, prefix: str = "") -> set[str]:
    names = {f"{prefix}{c.name or c.callback.__name__}" for c in group.registered_commands}
    for sub in group.registered_groups:
        names |= _commands(sub.typer_instance, f"{prefix}{sub.name} ")
    return names


def _dfp(args: list[str], env: dict | None = None, cwd: Path | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    done = subprocess.run([*DFP, *args], capture_output=True, text=True, env={**os.environ, **(env or {})},
                          cwd=cwd, timeout=900)
    return done, json.loads(done.stdout.strip().splitlines()[-1])


def _failures(tmp: Path) -> dict[str, tuple[list[str], dict]]:
    corrupt = tmp / "corrupt-home"
    corrupt.mkdir(exist_ok=True)
    (corrupt / "state.json").write_text("{not json")
    bad_home = {"DFP_HOME": str(corrupt)}
    (corrupt / "k8s").mkdir(exist_ok=True)
    (corrupt / "k8s" / "state.json").write_text("{not json")
    no_binaries = {"DFP_HOME": str(tmp / "node-home"), "DFP_K8S_BIN_DIR": str(tmp / "no-binaries")}
    return {
        "generate": (["generate", "--out", str(tmp / "g"), "--rows", "1"], {}),
        "transform": (["transform", "--input", str(tmp / "nowhere")], {}),
        "train": (["train", "--repo", "no-such-repo", "--ref", "main"], {}),
        "pipeline compile": (["pipeline", "compile", "--output", str(tmp)], {}),
        "pipeline run-local": (["pipeline", "run-local", "--runner", "kubernetes"], {}),
        "feast apply": (["feast", "apply", "--repo", "no-such-repo", "--ref", "main"], {}),
        "quickstart": (["quickstart", "--rows", "1"], {}),
        "reproduce": (["reproduce", "--model", "no_such_model", "--version", "1"], {}),
        "retarget": (["retarget", "--model", "no_such_model", "--version", "1", "--target-fpr", "0.01"], {}),
        "diff": (["diff", "--model", "no_such_model", "--versions", "1", "2"], {}),
        "drift": (["drift", "--model", "no_such_model", "--version", "1", "--input", str(tmp / "nowhere")], {}),
        "score": (["score", "--model-uri", "models:/no_such_model/1", "--input", str(tmp / "nowhere"),
                   "--out", str(tmp / "s.csv")], {}),
        "serve": (["serve", "--model-uri", "models:/no_such_model/1", "--port", str(free_port())], {}),
        "kserve": (["kserve", "--model", "no_such_model", "--version", "1"], {}),
        "evaluate": (["evaluate", "--model", "no_such_model", "--version", "1"], {}),
        "runs list": (["runs", "list", "--older-than", "yesterday"], {}),
        "runs gc": (["runs", "gc", "--older-than", "yesterday"], {}),
        "stack up": (["stack", "up", "--profile", "minio"], {}),
        "stack down": (["stack", "down"], bad_home),
        "stack status": (["stack", "status"], bad_home),
        "stack reset": (["stack", "reset"], {}),
        "cluster up": (["cluster", "up"], no_binaries),
        "cluster status": (["cluster", "status"], bad_home),
        "cluster down": (["cluster", "down"], bad_home),
        "cluster load-images": (["cluster", "load-images", "dfp/no-such-image:0"], {"DFP_HOME": str(tmp / "node-home")}),
    }


def test_every_command_fails_with_a_json_line_last(stack, tmp_path, report):
    cases = _failures(tmp_path)
    assert set(cases) == _commands(), "a command without a failure case here"
    for command, (args, env) in cases.items():
        done, last = _dfp(args, env, cwd=tmp_path)
        assert done.returncode != 0, command
        assert last["exit_code"] == done.returncode and last["error"], (command, last)
        assert "Traceback" not in done.stderr, (command, done.stderr[-2000:])
        assert last["error"].split(":")[0] in done.stderr, (command, done.stderr[-500:])
    report["faults"].append({"fault": "every `dfp` command run with bad input", "commands": len(cases),
                             "last_stdout_line_json": len(cases), "tracebacks": 0})


def test_every_command_succeeds_with_a_json_line_last(stack, repo, tmp_path):
    """The commands not run to success elsewhere: test_no_secret_on_argv runs transform, train,
    score, kserve and serve (and checks their JSON lines); LONG are their own suites'."""
    covered = set(WATCHED_COMMANDS)

    def ok(command: str, args: list[str], env: dict | None = None) -> dict:
        done, last = _dfp(args, env, cwd=tmp_path)
        assert done.returncode == 0, (command, done.stderr[-3000:])
        assert "error" not in last, (command, last)
        covered.add(command)
        return last

    ok("generate", ["generate", "--out", str(tmp_path / "g"), "--rows", "40"])
    ok("pipeline compile", ["pipeline", "compile", "--output", str(tmp_path / "p.yaml")])
    ok("runs list", ["runs", "list", "--repo", repo])
    ok("runs gc", ["runs", "gc", "--repo", repo])
    ok("stack up", ["stack", "up"])  # the session's stack: already running
    ok("stack status", ["stack", "status"])
    empty = {"DFP_HOME": str(tmp_path / "empty-home")}
    ok("stack down", ["stack", "down"], empty)
    ok("stack reset", ["stack", "reset", "--yes"], empty)
    ok("cluster status", ["cluster", "status"], empty)
    ok("cluster down", ["cluster", "down"], empty)
    assert covered | LONG == _commands()
