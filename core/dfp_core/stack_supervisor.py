"""The stack's watchdog: a process `dfp stack up` starts beside the servers that restarts a
server whose process died (a full disk kills lakeFS with SIGBUS; an OOM kill; a crash),
with a bounded backoff, until `down` stops it.

It restarts only servers that `up` started and nothing stopped on purpose (`down`, or
``stack.stop_service``): a server is watched while its record is in ``state.json``. Each
restart runs the same start-up as `up` (health check included) under the state's lock, so
it never races `up` or `down`. What it did goes to ``logs/supervisor.log`` and to
``supervisor-state.json``, which `dfp stack status` reports (restarts, the last error, the
next attempt while it backs off).

  python -m dfp_core.stack_supervisor --home DFP_HOME     (started by `up`; not by hand)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

from dfp_core import stack
from dfp_core.errors import StackError
from dfp_core.settings import StackSettings, read_env_file

INTERVAL_S = 1.0
# Backoff between failed restarts of one server: 1, 2, 4 ... 60 s; a server that stays up
# this long after a restart starts again from the shortest delay.
BACKOFF_MIN_S, BACKOFF_MAX_S, STABLE_S = 1.0, 60.0, 60.0


class Supervisor:
    def __init__(self, settings: StackSettings):
        self.settings = settings
        self.state = stack.StackState(settings.home)
        self.report: dict[str, dict] = stack.supervision_report(settings.home)
        self.failures: dict[str, int] = {}
        self.retry_at: dict[str, float] = {}
        self.log_path = settings.home / "logs" / "supervisor.log"
        self.running = True

    def log(self, message: str) -> None:
        try:
            with open(self.log_path, "a") as handle:
                handle.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {message}\n")
        except OSError:  # a full disk: the watchdog goes on without its log
            pass

    def _save_report(self) -> None:
        path = self.settings.home / stack.SUPERVISION_REPORT
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(self.report, indent=2, sort_keys=True))
            tmp.replace(path)
        except OSError:  # a full disk: the report catches up at the next change
            pass

    def tick(self) -> bool:
        """One look at every watched server; False once `down` has removed this supervisor."""
        _reap()
        with self.state.locked():
            records = self.state.load()
            if stack.SUPERVISOR not in records:
                return False
            profile = stack.profile_of(self.settings)
            creds = read_env_file(self.settings.env_file)
            for service in stack.services(profile, stack.lakefs_acl_of(self.settings, profile)):
                rec = records.get(service.name)
                if rec is None or rec.process() is not None:
                    self._settle(service.name, rec)
                    continue
                if time.time() < self.retry_at.get(service.name, 0):
                    continue
                new = self._restart(service, rec, creds, profile)
                if new is None:
                    continue
                records[service.name] = new
                try:
                    self.state.save(records)
                except OSError:  # unrecorded, it could never be stopped or watched: stop it, retry later
                    stack.terminate(new)
                    raise
        return True

    def _settle(self, name: str, rec) -> None:
        """A server up for STABLE_S since its restart starts over from the shortest backoff."""
        if rec is not None and self.failures.get(name) and time.time() - rec.create_time > STABLE_S:
            self.failures[name] = 0

    def _restart(self, service, rec, creds: dict[str, str], profile: str):
        name = service.name
        entry = self.report.setdefault(name, {"restarts": 0})
        if "down_since" not in entry:
            entry["down_since"] = time.time()
            self.log(f"{name}: pid {rec.pid} is gone; restarting it")
        stack.terminate(rec)  # what is left of its group (workers that outlived the leader)
        try:
            new = stack.start(service, self.settings, creds, profile, self.log)
        except StackError as exc:
            failures = self.failures[name] = self.failures.get(name, 0) + 1
            delay = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** (failures - 1))
            self.retry_at[name] = time.time() + delay
            entry.update(last_error=str(exc)[:500], retry_at=self.retry_at[name])
            self.log(f"{name}: restart failed ({exc}); next attempt in {delay:.0f}s")
            self._save_report()
            return None
        self.failures[name] = self.failures.get(name, 0) + 1  # until it proves stable
        self.retry_at.pop(name, None)
        entry["restarts"] += 1
        entry["last_restart_at"] = time.time()
        entry.pop("down_since", None)
        entry.pop("retry_at", None)
        self.log(f"{name}: restarted (pid {new.pid}; {entry['restarts']} restart(s) in all)")
        self._save_report()
        return new

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "running", False))
        self.log(f"watching the stack in {self.settings.home}")
        while self.running:
            try:
                if not self.tick():
                    break
            except Exception as exc:  # noqa: BLE001 - a full disk, a corrupt state file: say so, keep watching
                self.log(f"cannot look after the stack now ({exc.__class__.__name__}: {exc}); trying again")
            time.sleep(INTERVAL_S)
        self.log("stopped")
        return 0


def _reap() -> None:
    """Collect the servers this process restarted that have exited since (they are its
    children): a zombie would hold its pid and its record's liveness check."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        return Supervisor(stack.load_supervised_settings(args.home)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
