"""The Docker engine, for running the pipeline's steps in their images: one
clear line when there is no engine, it is not running, or an image is missing."""

from __future__ import annotations

import shutil

from dfp_core.errors import DfpError


class DockerError(DfpError):
    """No usable Docker engine, or an image it does not have."""


def docker_client():
    """A client of a running engine, or DockerError saying how to get one."""
    try:
        # Deferred (the Docker SDK): only the docker runner needs it.
        import docker
    except ImportError:  # pragma: no cover - kfp depends on it
        raise DockerError("the docker Python package is missing; run `make setup`") from None
    try:
        client = docker.from_env()
        client.ping()
        return client
    except docker.errors.DockerException as exc:
        if shutil.which("dockerd") is None and shutil.which("docker") is None:
            raise DockerError(
                "no Docker engine on this machine: install one (Debian: `apt-get install docker.io`, "
                "or `tools/scripts/docker_engine.sh` as root)"
            ) from None
        raise DockerError(
            f"the Docker engine is not running or not reachable ({exc.__class__.__name__}); start it "
            "(`tools/scripts/docker_engine.sh` as root, or `systemctl start docker`) or set DOCKER_HOST"
        ) from None


def require_images(client, images: tuple[str, ...] | list[str]) -> None:
    """Every image present locally, or DockerError naming the missing ones and `make images`."""
    # Deferred (the Docker SDK): only the docker runner needs it.
    import docker

    missing = []
    for image in images:
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            missing.append(image)
    if missing:
        raise DockerError(f"image(s) not built: {', '.join(missing)}; build them with `make images`")
