"""The JVM jars Spark needs beyond pyspark (Iceberg runtime, S3A), pinned with
checksums in ``tools/spark-jars/jars.lock`` and fetched once from Maven Central
into the shared cache. Standard library only: ``make setup`` runs it before
anything else is installed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCK_FILE = REPO_ROOT / "tools" / "spark-jars" / "jars.lock"


def _maven_repo() -> str:
    return os.environ.get("DFP_MAVEN_REPO", "https://repo1.maven.org/maven2").rstrip("/")


def _cache_root() -> Path:
    base = os.environ.get("DFP_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dfp"
    return Path(base).expanduser() / "spark-jars"


def locked_jars(lock_file: Path = LOCK_FILE) -> list[tuple[str, str]]:
    """(maven path, sha256) pairs from the lock file."""
    entries = []
    for line in lock_file.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            path, digest = line.split()
            entries.append((path, digest))
    return entries


# Not dfp_core.kronodroid.raw_files.file_digest: the Dockerfiles run this file on its own, before the
# project is installed, so it imports only the standard library at module level.
def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def jar_paths(jars_dir: Path | None = None, fetch: bool = False) -> list[Path]:
    """Local paths of every locked jar; fetches missing ones when ``fetch``."""
    root = Path(jars_dir) if jars_dir else _cache_root()
    paths = []
    missing = []
    for rel, digest in locked_jars():
        local = root / rel
        if not local.is_file():
            missing.append((rel, digest, local))
        paths.append(local)
    if missing and not fetch:
        # Inside: the images run this file alone, without the project installed.
        from dfp_core.errors import ConfigError

        raise ConfigError(
            f"{len(missing)} Spark jars are not downloaded yet (e.g. {missing[0][0]}); "
            "run `make setup` or `python core/dfp_core/spark_jars.py`"
        )
    for n, (rel, digest, local) in enumerate(missing, 1):
        _download(f"{_maven_repo()}/{rel}", local, digest, f"[{n}/{len(missing)}]")
    return paths


def _download(url: str, dest: Path, digest: str, label: str) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".part")
    print(f"{label} {url.rsplit('/', 1)[-1]}", file=sys.stderr, flush=True)
    with urllib.request.urlopen(url, timeout=120) as resp, open(tmp, "wb") as out:
        while block := resp.read(1 << 20):
            out.write(block)
    actual = _sha256(tmp)
    if actual != digest:
        tmp.unlink()
        raise SystemExit(f"error: checksum mismatch for {url}: expected {digest}, got {actual}")
    tmp.replace(dest)


def main(argv: list[str]) -> None:
    """Fetch what is missing into the cache; ``--into DIR`` also copies the jars there
    (an image's $SPARK_HOME/jars)."""
    found = jar_paths(fetch=True)
    total = sum(p.stat().st_size for p in found)
    print(f"Spark jars: {len(found)} files, {total / 1e6:.1f} MB in {_cache_root()}", file=sys.stderr)
    if argv[:1] == ["--into"] and len(argv) == 2:
        for path in found:
            shutil.copy2(path, Path(argv[1]) / path.name)
        print(f"copied into {argv[1]}", file=sys.stderr)
    elif argv:
        raise SystemExit("usage: spark_jars.py [--into DIR]")


if __name__ == "__main__":
    main(sys.argv[1:])
