"""Build times and sizes of the images `make images` builds.

  .venv/bin/python bench/images.py                  # rebuild with the layer cache as it is
  .venv/bin/python bench/images.py --cold           # first build: images, base and build cache removed
  .venv/bin/python bench/images.py --images spark,train

Each image is built by tools/scripts/build_images.sh on its own, so its seconds are its own. A
cold run removes the project's images, the Debian base the script makes where the public base
cannot be pulled, and BuildKit's whole build cache (`docker builder prune -af`) first: it downloads
everything again (several GB for the training image). Also reports the size of each image's
largest layers (what a registry push and a node's pull move). Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, log as _log, save  # noqa: E402

SCRIPT = ROOT / "tools" / "scripts" / "build_images.sh"
BASE = "dfp/base:bookworm-py3.11"


def log(message: str) -> None:
    _log("images", message)


def docker(*args: str, check: bool = True) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check).stdout


def remove_everything(images: list[str]) -> None:
    """The images (all their tags), the script's Debian base and the build cache."""
    names = {"train": "dfp/kronodroid-train", "spark": "dfp/kronodroid-spark", "mlflow": "dfp/mlflow-server"}
    for image in images:
        ids = docker("images", "-q", names[image]).split()
        if ids:
            docker("rmi", "-f", *sorted(set(ids)), check=False)
    docker("rmi", "-f", BASE, check=False)
    docker("builder", "prune", "-af", check=False)


def largest_layers(image: str, count: int = 3) -> list[dict]:
    history = docker("history", "--no-trunc", "--format", "{{json .}}", image).splitlines()
    layers = []
    for line in history:
        entry = json.loads(line)
        size = entry.get("Size", "0B")
        number, unit = float(size.rstrip("kMGTB") or 0), size.lstrip("0123456789.")
        scale = {"B": 1e-6, "kB": 1e-3, "KB": 1e-3, "MB": 1.0, "GB": 1e3, "TB": 1e6}.get(unit, 0)
        layers.append({"mb": round(number * scale, 1), "created_by": entry.get("CreatedBy", "")[:120]})
    return sorted(layers, key=lambda layer: -layer["mb"])[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default="spark,train,mlflow")
    parser.add_argument("--cold", action="store_true", help="remove images, base and build cache first")
    args = parser.parse_args()
    images = [i.strip() for i in args.images.split(",") if i.strip()]
    if args.cold:
        log("removing the images, the Debian base and the build cache")
        remove_everything(images)
    figures: dict = {"cold": args.cold, "images": {}}
    for image in images:
        log(f"building {image}")
        started = time.monotonic()
        done = subprocess.run([str(SCRIPT), image], capture_output=True, text=True)
        seconds = time.monotonic() - started
        if done.returncode != 0:
            sys.stderr.write(done.stderr[-3000:])
            raise SystemExit(f"building {image} failed")
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        built = summary["images"][image]
        if "building dfp/base" in done.stderr:
            figures["debian_base_built"] = True
        figures["base_image"] = summary["base_image"]
        figures["images"][image] = {
            "tag": built["image"], "seconds": round(seconds, 1), "build_seconds": built["seconds"],
            "size_mb": built["size_mb"], "largest_layers": largest_layers(built["image"]),
        }
        log(f"{built['image']}: {seconds:.0f}s, {built['size_mb']} MB")
    save("images_cold" if args.cold else "images", figures)


if __name__ == "__main__":
    main()
