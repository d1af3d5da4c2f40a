"""Watches every process command line on this machine for secrets, as a local user with
`ps` would see them: a thread reads /proc/*/cmdline over and over while it runs."""

from __future__ import annotations

import os
import threading
from pathlib import Path

# The commands test_no_secret_on_argv runs to success under the watch (and whose JSON lines it
# checks); test_cli_json counts them as covered.
WATCHED_COMMANDS = ("transform", "train", "score", "kserve", "serve")


def stack_secrets(env_file: Path) -> dict[str, str]:
    """The secret values of a stack's ``stack.env`` (keys, passwords), by name."""
    found = {}
    for line in env_file.read_text().splitlines():
        key, sep, value = line.partition("=")
        value = value.strip().strip("'\"")
        if sep and value and any(word in key for word in ("SECRET", "PASSWORD", "TOKEN")):
            found[key.strip()] = value
    return found


class ArgvWatch:
    """``with ArgvWatch(secrets) as watch: ...`` then ``watch.leaks``: (pid, secret name,
    command) for every process whose command line held one, the secret masked."""

    def __init__(self, secrets: dict[str, str], interval_s: float = 0.02):
        self.secrets = {name: value for name, value in secrets.items() if len(value) >= 8}
        self.interval_s = interval_s
        self.leaks: list[tuple[int, str, str]] = []
        self.commands_seen: set[str] = set()  # each distinct command line, its secrets masked
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="argv-watch", daemon=True)

    def _scan(self) -> None:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                raw = Path(entry.path, "cmdline").read_bytes()
            except OSError:  # gone, or not ours to read
                continue
            text = raw.replace(b"\0", b" ").decode(errors="replace").rstrip()
            for name, value in self.secrets.items():
                if value in text and (int(entry.name), name) not in {(pid, n) for pid, n, _ in self.leaks}:
                    self.leaks.append((int(entry.name), name, text.replace(value, "<" + name + ">")[:300]))
                text = text.replace(value, "<" + name + ">")
            self.commands_seen.add(text)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._scan()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "ArgvWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._scan()
