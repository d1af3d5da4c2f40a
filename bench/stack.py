"""Foundation benchmark: local stack start-up, a cold lakeFS build, and what
`make setup` downloads.

  .venv/bin/python bench/stack.py [--repeats 3] [--cold-lakefs-build] [--setup-download-size]

Always: `stack.up()` to healthy (lakeFS binary cached, fresh DFP_HOME, free
ports), `--repeats` times with fresh homes, plus an idempotent second `up` on
the running stack. `--cold-lakefs-build` (~2 GB of Go modules) times
`tools/scripts/build_lakefs.sh` with empty DFP_CACHE_DIR, GOMODCACHE and
GOCACHE. `--setup-download-size` (~3 GB of wheels) sizes the Python wheels,
Spark jars and Go modules that `make setup` fetches.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, private_stack, run_measured, save  # noqa: E402
from _common import log as _log  # noqa: E402

MB = 1e6


def log(message: str) -> None:
    _log("stack", message)


def tree_bytes(path: Path) -> int:
    """Apparent size of every regular file under ``path`` (like ``du -sb``)."""
    total = 0
    for base, _, files in os.walk(path):
        for name in files:
            full = os.path.join(base, name)
            if not os.path.islink(full):
                total += os.path.getsize(full)
    return total


# --------------------------------------------------------------------------- stack start-up


def stack_up_figures(repeats: int) -> dict:
    """Fresh-home start-ups of the local profile, MLflow's basic-auth app off and on in turn
    (the auth app's cost decides whether the local profile runs it by default)."""
    from dfp_core import stack
    from dfp_core.settings import StackSettings

    binary = stack.lakefs_binary(StackSettings.from_env(os.environ))  # fails early with the setup hint when not built
    ups: dict[bool, list[float]] = {False: [], True: []}
    agains = []
    for i in range(repeats):
        for auth in (False, True):
            with tempfile.TemporaryDirectory(prefix="dfp-bench-stack-") as tmp:
                with private_stack(Path(tmp) / "home", mlflow_auth=auth) as (settings, seconds, _):
                    ups[auth].append(seconds)
                    started = time.monotonic()
                    stack.up(settings, log=lambda m: None)
                    agains.append(time.monotonic() - started)
            log(f"up #{i + 1} (MLflow auth {'on' if auth else 'off'}): {seconds:.1f}s to healthy, "
                f"second up {agains[-1]:.2f}s")
    off, on = statistics.median(ups[False]), statistics.median(ups[True])
    return {
        "stack_up_seconds_each": [round(s, 2) for s in ups[False]],
        "stack_up_seconds": round(off, 2),
        "stack_up_mlflow_auth_seconds_each": [round(s, 2) for s in ups[True]],
        "stack_up_mlflow_auth_seconds": round(on, 2),
        "mlflow_auth_cost_seconds": round(on - off, 2),
        "stack_up_again_seconds_each": [round(s, 3) for s in agains],
        "stack_up_again_seconds": round(statistics.median(agains), 3),
        "lakefs_binary_mb": round(binary.stat().st_size / MB, 1),
    }


# --------------------------------------------------------------------------- cold lakeFS build


def cold_lakefs_build() -> dict:
    """build_lakefs.sh with every Go and DFP cache empty: module download + compile."""
    with tempfile.TemporaryDirectory(prefix="dfp-bench-gobuild-") as tmp:
        tmp = Path(tmp)
        env = {
            "DFP_CACHE_DIR": str(tmp / "dfp-cache"),
            "GOMODCACHE": str(tmp / "gomodcache"),
            "GOCACHE": str(tmp / "gocache"),
            # Module cache files are read-only by default; -modcacherw lets us delete them.
            "GOFLAGS": (os.environ.get("GOFLAGS", "") + " -modcacherw").strip(),
        }
        log("cold lakeFS build (module download + compile); this takes minutes")
        result = run_measured(["bash", str(ROOT / "tools" / "scripts" / "build_lakefs.sh")], env=env)
        binary = Path(result["last_line"])
        download = tmp / "gomodcache" / "cache" / "download"
        zips = sum(p.stat().st_size for p in download.rglob("*.zip")) if download.is_dir() else 0
        figures = {
            "lakefs_cold_build_seconds": round(result["seconds"], 1),
            "lakefs_cold_build_peak_rss_mb": round(result["peak_rss_mb"]),
            "lakefs_cold_build_binary_mb": round(binary.stat().st_size / MB, 1) if binary.is_file() else None,
            "go_modules_download_mb": round(tree_bytes(download) / MB, 1) if download.is_dir() else None,
            "go_modules_zip_mb": round(zips / MB, 1),
            "go_modules_extracted_mb": round(tree_bytes(tmp / "gomodcache") / MB, 1),
            "go_build_cache_mb": round(tree_bytes(tmp / "gocache") / MB, 1),
        }
        log(f"cold build: {figures['lakefs_cold_build_seconds']}s, {figures['go_modules_download_mb']} MB of modules")
    return figures


# --------------------------------------------------------------------------- setup download size


def wheels_mb() -> tuple[float, int]:
    """``pip download --no-deps`` of every pinned requirement, with an empty pip cache."""
    lock = ROOT / "requirements.lock"
    with tempfile.TemporaryDirectory(prefix="dfp-bench-wheels-") as tmp:
        tmp = Path(tmp)
        kept = []
        for line in lock.read_text().splitlines():
            text = line.strip()
            # The project itself is installed editable, not downloaded.
            if text.startswith(("-e", "--editable")) or " @ file:" in text or text.lower().replace("_", "-").startswith("dfp-kronodroid"):
                continue
            kept.append(line)
        reqs = tmp / "requirements.txt"
        reqs.write_text("\n".join(kept) + "\n")
        dest = tmp / "wheels"
        env = {"PIP_CACHE_DIR": str(tmp / "pip-cache")}
        log(f"pip download of {sum(1 for k in kept if k.strip() and not k.lstrip().startswith('#'))} pinned packages (~3 GB)")
        started = time.monotonic()
        subprocess.run(
            [str(ROOT / ".venv" / "bin" / "python"), "-m", "pip", "download", "--no-deps", "--progress-bar", "off",
             "-r", str(reqs), "-d", str(dest)],
            check=True, env={**os.environ, **env}, stdout=sys.stderr,
        )
        log(f"pip download took {time.monotonic() - started:.0f}s")
        files = [p for p in dest.iterdir() if p.is_file()]
        return sum(p.stat().st_size for p in files) / MB, len(files)


def spark_jars_mb() -> tuple[float, int]:
    from dfp_core.spark_jars import jar_paths

    paths = jar_paths()  # the locked jars in the shared cache (raises when missing)
    return sum(p.stat().st_size for p in paths) / MB, len(paths)


def go_modules_zip_mb() -> tuple[float, int]:
    """Sizes of the module zips the lakeFS build downloaded (its own module cache; build_go_server.sh
    keeps the zips after a build and removes the extracted trees)."""
    from dfp_core.settings import cache_dir

    download = cache_dir(os.environ) / "lakefs" / "go" / "mod" / "cache" / "download"
    zips = list(download.rglob("*.zip")) if download.is_dir() else []
    if not zips:
        raise SystemExit(f"no module zips under {download}: run tools/scripts/build_lakefs.sh (or make setup) first")
    return sum(p.stat().st_size for p in zips) / MB, len(zips)


def setup_download_figures(cold: dict | None) -> dict:
    from dfp_core import stack
    from dfp_core.settings import StackSettings

    wheels, n_wheels = wheels_mb()
    jars, n_jars = spark_jars_mb()
    if cold and cold.get("go_modules_download_mb") is not None:
        go_mb, go_source, n_mods = cold["go_modules_download_mb"], "cold build GOMODCACHE/cache/download", None
    else:
        go_mb, n_mods = go_modules_zip_mb()
        go_source = "the lakeFS build's module zips (DFP cache)"
    binary = stack.lakefs_binary(StackSettings.from_env(os.environ)).stat().st_size / MB
    total = wheels + jars + go_mb
    return {
        "setup_wheels_mb": round(wheels, 1),
        "setup_wheels_files": n_wheels,
        "setup_spark_jars_mb": round(jars, 1),
        "setup_spark_jars_files": n_jars,
        "setup_go_modules_mb": round(go_mb, 1),
        "setup_go_modules_count": n_mods,
        "setup_go_modules_source": go_source,
        "setup_lakefs_binary_mb": round(binary, 1),
        "setup_download_total_mb": round(total, 1),
        "setup_download_note": "total = wheels + Spark jars + Go modules; the lakeFS binary is built locally, not downloaded",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="fresh-home start-ups to time")
    parser.add_argument("--cold-lakefs-build", action="store_true", help="time a truly cold lakeFS build (~2 GB download)")
    parser.add_argument("--setup-download-size", action="store_true", help="size what make setup downloads (~3 GB)")
    parser.add_argument("--skip-stack-up", action="store_true", help="only the flagged measurements")
    args = parser.parse_args()

    figures: dict = {}
    if not args.skip_stack_up:
        figures.update(stack_up_figures(args.repeats))
    cold = None
    if args.cold_lakefs_build:
        cold = cold_lakefs_build()
        figures.update(cold)
    if args.setup_download_size:
        figures.update(setup_download_figures(cold))
    if not figures:
        raise SystemExit("nothing measured: drop --skip-stack-up or add a flag")
    # Keep heavier figures measured earlier when this run did not measure them.
    previous = RESULTS / "stack.json"
    if previous.is_file():
        try:
            old = json.loads(previous.read_text())
        except ValueError:
            old = {}
        carried = [k for k in old if k.startswith(("lakefs_cold_build", "go_", "setup_")) and k not in figures]
        for key in carried:
            figures[key] = old[key]
        if carried:
            figures["heavy_figures_measured_at"] = old.get("heavy_figures_measured_at", old.get("measured_at"))
    save("stack", figures)


if __name__ == "__main__":
    main()
