"""The one-node Kubernetes cluster: how long its binaries take to build, how long `up` takes
to a Ready node, and how much memory its processes hold.

  .venv/bin/python bench/k8s_node.py [--cold-build] [--idle 30]

Always (binaries already built): `up` with a fresh DFP_HOME to Ready (certificates, etcd,
containerd made anew), `down`, then `up` again on the same home (data kept), the cached
build script's time, and the peak RSS of each process of the node (its process group) from
`up` to `--idle` seconds after Ready, and their summed peak. `--cold-build` first times
tools/scripts/build_kubernetes.sh with an empty DFP_CACHE_DIR (every Go module downloaded,
every package compiled; 7-15 minutes on 2 cores). Needs root. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, PeakMemory, save  # noqa: E402
from _common import log as _log  # noqa: E402

BUILD = ROOT / "tools" / "scripts" / "build_kubernetes.sh"
MB = 2**20


def log(message: str) -> None:
    _log("k8s_node", message)


def timed_build(env: dict) -> float:
    started = time.monotonic()
    subprocess.run(["bash", str(BUILD)], check=True, env=env, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


class NodeMemory(PeakMemory):
    """Peak RSS of each of the node's processes (its whole process group), sampled from the
    node's state file while it runs; and the peak of their sum."""

    def __init__(self, settings, interval: float = 0.5):
        super().__init__(interval=interval)
        self.settings = settings
        self.peaks: dict[str, float] = {}
        self.peak_sum = 0.0

    def _run(self):
        from dfp_core.stack import StackState

        while not self._stop.is_set():
            try:
                records = StackState(self.settings.home).load()
            except Exception:  # noqa: BLE001 - the state file is being rewritten; next sample
                records = {}
            total = 0.0
            for name, rec in records.items():
                rss = 0
                for proc in rec.group():
                    try:
                        rss += proc.memory_info().rss
                    except psutil.Error:
                        continue
                self.peaks[name] = max(self.peaks.get(name, 0.0), rss / MB)
                total += rss / MB
            self.peak_sum = max(self.peak_sum, total)
            time.sleep(self.interval)


def node_figures(idle: float) -> dict:
    from dfp_core.k8s import node
    from dfp_core.k8s.layout import NodeSettings

    with tempfile.TemporaryDirectory(prefix="dfp-bench-k8s-") as tmp:
        settings = NodeSettings.from_env({**os.environ, "DFP_HOME": str(Path(tmp) / "home")})
        quiet = lambda m: None  # noqa: E731
        try:
            with NodeMemory(settings) as memory:
                started = time.monotonic()
                first = node.up(settings, log=quiet)
                fresh_up = time.monotonic() - started
                log(f"up (fresh home) to Ready: {fresh_up:.1f}s; idle {idle:.0f}s for memory")
                time.sleep(idle)
            started = time.monotonic()
            node.down(settings, log=quiet)
            down_seconds = time.monotonic() - started
            started = time.monotonic()
            node.up(settings, log=quiet)
            again_up = time.monotonic() - started
            log(f"down: {down_seconds:.1f}s; up again (same home): {again_up:.1f}s")
        finally:
            node.down(settings, log=quiet)
    return {
        "up_fresh_home_to_ready_seconds": round(fresh_up, 1),
        "up_fresh_home_ready_wait_seconds": first["ready_wait_seconds"],
        "down_seconds": round(down_seconds, 1),
        "up_same_home_to_ready_seconds": round(again_up, 1),
        "idle_seconds_sampled_after_ready": idle,
        "peak_rss_mb_per_process": {k: round(v, 1) for k, v in sorted(memory.peaks.items())},
        "peak_rss_mb_sum": round(memory.peak_sum, 1),
        "kubernetes_version": first["kubernetes_version"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cold-build", action="store_true", help="time a build with empty caches first (minutes)")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds to sample memory after Ready")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/k8s_node.py needs root (the node does)")
    figures: dict = {}
    if args.cold_build:
        with tempfile.TemporaryDirectory(prefix="dfp-bench-k8s-cache-") as cache:
            env = {k: v for k, v in os.environ.items() if k not in ("GOMODCACHE", "GOCACHE")}
            env["DFP_CACHE_DIR"] = cache
            log("cold build (empty caches: every module downloaded, every package compiled)...")
            figures["build_cold_seconds"] = round(timed_build(env), 1)
            figures["build_cached_seconds_same_cache"] = round(timed_build(env), 2)
            log(f"cold build: {figures['build_cold_seconds']}s")
    figures["build_cached_seconds"] = round(timed_build(dict(os.environ)), 2)  # the binaries the node uses
    figures.update(node_figures(args.idle))
    save("k8s_node", figures)


if __name__ == "__main__":
    main()
