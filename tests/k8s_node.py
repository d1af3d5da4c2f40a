"""The one-node Kubernetes cluster of the ``k8s`` tests: started once, in a DFP_HOME of its
own under the session's temp folder, for the package tests/integration/k8s_cluster (whose
conftest binds these fixtures to it), reused by every test there that asks for ``k8s_node``,
and stopped after the package's last test, its imported images deleted. Where the node cannot
run here (not root, a tool the deps script could not install, no cgroups, binaries not built,
a node already running, too little disk for its images), every such test skips with one line
saying why."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPS_SCRIPT = REPO_ROOT / "tools" / "scripts" / "k8s_node_deps.sh"
# A tiny image for the node's own tests: Debian's static busybox (nslookup, nc, wget) and
# nothing else, made with `docker import`, so the test exercises the Docker -> node path.
PROBE_IMAGE = "dfp-test/busybox:1"
BUSYBOX = Path("/bin/busybox")
# The node's disk at its fullest in the suite (etcd, and containerd with the images the tests
# import): measured 3.4 GB, with a margin.
NODE_DISK_MB = 4500


@dataclass
class Node:
    settings: object  # dfp_core.k8s.layout.NodeSettings
    status: dict  # what `up` returned

    def kubectl(self, *args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        from dfp_core.k8s import api

        return api.kubectl(self.settings, *args, stdin=stdin, timeout=timeout, check=False)

    def env(self) -> dict[str, str]:
        """What a process needs to use this node (``dfp cluster ...`` and kubeconfig users)."""
        return {"DFP_HOME": str(self.settings.home.parent), "KUBECONFIG": str(self.settings.paths.admin_kubeconfig)}


def _unusable_reason(settings) -> str | None:
    """Why the node cannot run on this machine, in one line; None when it can."""
    from dfp_core.errors import StackError
    from dfp_core.k8s import host, layout

    if os.geteuid() != 0:
        return "the Kubernetes node needs root"
    try:
        host.check_tools()
    except StackError:
        subprocess.run(["bash", str(DEPS_SCRIPT)], capture_output=True)  # once; what .ci/run also does
    try:
        host.check_tools()
        host.cgroup_mode()
        _build_binaries(settings)
        host.check_ports([c for c in {p.component for p in layout.PORTS}])
    except StackError as exc:
        return str(exc)
    return None


def _build_binaries(settings) -> None:
    """The node's binaries, as `make test` gets its images: built here the first time (minutes;
    .ci/run starts the build early in the background, and this waits on its lock)."""
    from dfp_core.errors import StackError
    from dfp_core.k8s import host

    try:
        host.check_binaries(settings)
        return
    except StackError:
        if os.environ.get("DFP_K8S_BIN_DIR"):  # binaries named by the user: not ours to build
            raise
    built = subprocess.run(["bash", str(REPO_ROOT / host.BUILD_SCRIPT)], capture_output=True, text=True)
    if built.returncode != 0:
        lines = built.stderr.strip().splitlines() or ["no output"]
        raise StackError(f"building the node's binaries failed: {lines[-1]}")
    host.check_binaries(settings)


@pytest.fixture(scope="package")
def k8s_node(tmp_path_factory):
    from dfp_core.k8s import node
    from dfp_core.k8s.layout import NodeSettings
    from tests.images import skip_unless_free

    home = tmp_path_factory.mktemp("k8s-node")
    settings = NodeSettings.from_env({**os.environ, "DFP_HOME": str(home)})
    reason = _unusable_reason(settings)
    if reason:
        pytest.skip(f"no Kubernetes node here: {reason}")
    skip_unless_free(home, NODE_DISK_MB, "the Kubernetes node and its images")
    try:
        status = node.up(settings)
    except BaseException:
        _down_and_drop_images(settings)
        raise
    try:
        yield Node(settings, status)
    finally:
        _down_and_drop_images(settings)


def _down_and_drop_images(settings) -> None:
    """`down` keeps the node's data for a user's next `up`; the suite's node is not started
    again, so its containerd root (the imported images) goes too. Logs and etcd stay."""
    from dfp_core.k8s import node

    node.down(settings, log=lambda m: None)
    shutil.rmtree(settings.paths.containerd_root, ignore_errors=True)


def probe_image_archive() -> bytes:
    """``/bin/busybox`` as a one-file root filesystem, for ``docker import``."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        tar.add(str(BUSYBOX), arcname="bin/busybox")
        for folder in ("tmp", "etc"):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if folder == "tmp" else 0o755
            tar.addfile(info)
    return out.getvalue()


def ensure_probe_image() -> str:
    """The probe image in the Docker engine (made once)."""
    if subprocess.run(["docker", "image", "inspect", PROBE_IMAGE], capture_output=True).returncode == 0:
        return PROBE_IMAGE
    if not BUSYBOX.is_file():
        pytest.skip(f"no {BUSYBOX} for the probe image: run {DEPS_SCRIPT} (busybox-static)")
    made = subprocess.run(["docker", "import", "-c", 'ENTRYPOINT ["/bin/busybox"]', "-", PROBE_IMAGE],
                          input=probe_image_archive(), capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot make the probe image with the Docker engine: {made.stderr.decode().strip()[-200:]}")
    return PROBE_IMAGE


@pytest.fixture(scope="package")
def spark_operator(k8s_node) -> dict:
    """The Spark Operator on the package's node (what ``spark_operator.deploy`` returns), with
    the pipeline images built from this checkout first (the operator's image is built on top
    of the Spark image)."""
    from dfp_core.k8s import spark_operator as operator
    from tests.images import PIPELINE_IMAGES, build_images, skip_unless_free

    if not operator.VENDORED.is_file():
        pytest.skip(f"no vendored Spark Operator release at {operator.VENDORED} (../shared/vendor)")
    build_images(*PIPELINE_IMAGES)
    skip_unless_free(k8s_node.settings.home, NODE_DISK_MB, "importing the images into the node")
    return operator.deploy(k8s_node.settings, log=lambda m: None)
