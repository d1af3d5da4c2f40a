"""A quiet stage sends everything its body writes, from Python, the descriptors or a child
process, to its log, and shows one line; on failure, the log's tail and its path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dfp_core.progress import error, failure_tail, quiet_stage


def _noisy(tag: str) -> None:
    print(f"{tag} print")
    sys.stderr.write(f"{tag} stderr\n")
    os.write(1, f"{tag} fd1\n".encode())
    subprocess.run([sys.executable, "-c", f"import sys; print('{tag} child'); print('{tag} child err', file=sys.stderr)"],
                   check=True)


def test_the_body_writes_to_the_log_and_the_terminal_gets_one_line(tmp_path, capfd):
    log = tmp_path / "logs" / "run.log"
    with quiet_stage(1, 2, "noisy stage", log):
        _noisy("alpha")
    print("after")  # the terminal is back
    out, err = capfd.readouterr()
    assert "alpha" not in out + err
    assert out == "after\n"
    assert [line for line in err.splitlines() if line.strip()] == [err.strip().splitlines()[-1]]
    assert "[1/2] noisy stage: done in" in err
    text = log.read_text()
    for what in ("print", "stderr", "fd1", "child", "child err"):
        assert f"alpha {what}\n" in text, what


def test_a_failure_shows_the_logs_tail_and_path_then_raises(tmp_path, capfd):
    log = tmp_path / "run.log"
    with pytest.raises(RuntimeError, match="boom"):
        with quiet_stage(2, 2, "failing stage", log, retry_hint="rerun with -v"):
            for i in range(30):
                print(f"line {i}")
            print("----")
            print('    "outputFile": "/tmp/x/run_id"')
            print("error: the cause")
            raise RuntimeError("boom")
    _, err = capfd.readouterr()
    assert "[2/2] failing stage: failed after" in err
    assert "error: the cause" in err and "line 29" in err and "line 10" not in err and "outputFile" not in err
    assert f"full log: {log}; rerun with -v" in err
    assert failure_tail(log, 3) == ["line 28", "line 29", "error: the cause"]


def test_verbose_streams_as_a_plain_stage(tmp_path, capfd):
    log = tmp_path / "run.log"
    with quiet_stage(1, 1, "loud stage", log, verbose=True):
        print("beta print")
    out, err = capfd.readouterr()
    assert "beta print" in out and "==> [1/1] loud stage" in err and not log.exists()


def test_logs_are_named_by_command_and_colours_come_off(tmp_path):
    from dfp_core.progress import command_log, plain

    log = command_log(tmp_path, "quickstart")
    assert log.parent == tmp_path / "logs" and log.name.startswith("quickstart-") and log.suffix == ".log"
    assert plain("Task \x1b[96m'kronodroid-spark-transform'\x1b[0m finished with status \x1b[91mFAILURE\x1b[0m") == \
        "Task 'kronodroid-spark-transform' finished with status FAILURE"


FULL_LOG = """
import resource, signal, sys
from pathlib import Path
from dfp_core.progress import quiet_stage
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as ENOSPC on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
log = Path(sys.argv[1])
with quiet_stage(1, 1, "writes past the room", log):
    for _ in range(100):
        print("x" * 1000)
    print("more", file=sys.stderr)
try:
    with quiet_stage(1, 1, "fails past the room", log):
        print("y" * 10_000)
        raise ValueError("the stage's own error")
except ValueError as exc:
    print(f"raised: {exc}")
"""


def test_a_log_without_room_loses_lines_not_the_stage(tmp_path):
    """A log that cannot grow (a full disk under DFP_HOME; here a file-size limit, which fails
    writes the same way): the stage still ends as it would, with its own error if any."""
    done = subprocess.run([sys.executable, "-c", FULL_LOG, str(tmp_path / "stage.log")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "raised: the stage's own error"
    assert "writes past the room: done in" in done.stderr and "fails past the room: failed after" in done.stderr
    assert (tmp_path / "stage.log").stat().st_size <= 4096


def test_an_error_of_several_lines_ends_the_command_as_one(capfd):
    error("upload 'leases/run-x.json': write /home/lakefs/data/x: no space left on device\nfailed to write to storage\n")
    _, err = capfd.readouterr()
    assert err == "error: upload 'leases/run-x.json': write /home/lakefs/data/x: no space left on device; " \
                  "failed to write to storage\n"
