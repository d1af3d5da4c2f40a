"""Images on the node without a registry: the pause image (made here from the pause binary
built with the node) and images imported from the Docker engine into the node's containerd
(``docker save IMG | ctr images import -``). Pods run them with ``imagePullPolicy: Never``
or ``IfNotPresent``. An image already imported with the same Docker image id is skipped."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable

from dfp_core.errors import StackError
from dfp_core.k8s import layout
from dfp_core.k8s.layout import NodeSettings

NAMESPACE = "k8s.io"  # the CRI plugin's containerd namespace
Log = Callable[[str], None]


def ctr(settings: NodeSettings, *args: str, stdin=None, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    cmd = ["ctr", "--address", str(settings.paths.containerd_socket), "--namespace", NAMESPACE, *args]
    proc = subprocess.run(cmd, stdin=stdin, capture_output=True, timeout=timeout)
    if check and proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        raise StackError(f"`ctr {' '.join(args[:3])}` failed on the node's containerd: {lines[-1] if lines else proc.returncode}")
    return proc


def image_names(settings: NodeSettings) -> set[str]:
    out = ctr(settings, "images", "list", "--quiet").stdout.decode()
    return {line.strip() for line in out.splitlines() if line.strip()}


def normalized(image: str) -> str:
    """The name containerd (and the kubelet) give a Docker image reference."""
    name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "latest")
    name = name or image
    if "/" not in name:
        name = f"library/{name}"
    first = name.split("/")[0]
    if "." not in first and ":" not in first and first != "localhost":
        name = f"docker.io/{name}"
    return f"{name}:{tag}"


def pause_archive(pause_binary: Path, ref: str = layout.PAUSE_IMAGE) -> bytes:
    """A one-layer image in ``docker save`` format holding ``/pause``, deterministic for one
    binary (fixed mtimes and owners)."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        data = pause_binary.read_bytes()
        info = tarfile.TarInfo("pause")
        info.size, info.mode, info.mtime, info.uid, info.gid = len(data), 0o755, 0, 0, 0
        tar.addfile(info, io.BytesIO(data))
    layer_bytes = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
        "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "dfp k8s node: pause"}],
    }, sort_keys=True).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    layer_name = diff_id.split(":")[1] + "/layer.tar"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [ref], "Layers": [layer_name]}]).encode()
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for name, body in ((config_name, config), (layer_name, layer_bytes), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(body), 0
            tar.addfile(info, io.BytesIO(body))
    return archive.getvalue()


def ensure_pause_image(settings: NodeSettings) -> bool:
    """Import the sandbox image when containerd lacks it; True when it was imported."""
    if layout.PAUSE_IMAGE in image_names(settings):
        return False
    with tempfile.TemporaryFile() as archive:
        archive.write(pause_archive(settings.binary("pause")))
        archive.seek(0)
        ctr(settings, "images", "import", "-", stdin=archive)
    return True


def _docker_id(image: str) -> str:
    proc = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", image], capture_output=True, text=True)
    if proc.returncode != 0:
        if "No such image" in proc.stderr or "No such object" in proc.stderr:
            raise StackError(f"the Docker engine has no image {image}; build it first (`make images` builds the "
                             "project's train and Spark images)")
        raise StackError(f"cannot read image {image} from the Docker engine: "
                         f"{(proc.stderr.strip().splitlines() or ['is dockerd running?'])[-1]}")
    return proc.stdout.strip()


def _load_record(path: Path) -> dict[str, str]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def load_images(settings: NodeSettings, images: list[str], log: Log) -> dict[str, dict]:
    """Import the Docker images the node lacks (or holds with another image id), all in one
    ``docker save`` so the layers they share are read once. Returns ``{image: {"name":
    containerd's name, "id": Docker id, "imported": bool, "seconds": the import's time}}``."""
    if not settings.paths.containerd_socket.exists():
        raise StackError("the node is not running (no containerd socket); start it with `dfp cluster up`")
    record_path = settings.paths.images_record
    record = _load_record(record_path)
    present = image_names(settings)
    result, todo = {}, []
    for image in images:
        image_id, name = _docker_id(image), normalized(image)
        result[image] = {"name": name, "id": image_id, "imported": False, "seconds": 0.0}
        if record.get(name) == image_id and name in present:
            log(f"{image}: already on the node ({image_id[:19]})")
        else:
            todo.append(image)
    if not todo:
        return result
    started = time.monotonic()
    log(f"importing {', '.join(todo)} into the node's containerd ...")
    save = subprocess.Popen(["docker", "save", *todo], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        imported = ctr(settings, "images", "import", "-", stdin=save.stdout, check=False, timeout=1800)
    finally:
        save.stdout.close()
        save_err = save.stderr.read().decode(errors="replace").strip()
        save.wait()
    if save.returncode != 0:
        raise StackError(f"`docker save {' '.join(todo)}` failed: {(save_err.splitlines() or ['?'])[-1]}")
    if imported.returncode != 0:
        lines = imported.stderr.decode(errors="replace").strip().splitlines()
        raise StackError(f"importing {', '.join(todo)} into the node failed: {lines[-1] if lines else imported.returncode}")
    seconds = round(time.monotonic() - started, 1)
    present = image_names(settings)
    for image in todo:
        entry = result[image]
        if entry["name"] not in present:
            raise StackError(f"importing {image} into the node made no image {entry['name']}")
        record[entry["name"]] = entry["id"]
        entry.update(imported=True, seconds=seconds)
    record_path.write_text(json.dumps(record, indent=1, sort_keys=True))
    log(f"imported {', '.join(todo)} in {seconds:.1f}s")
    return result
