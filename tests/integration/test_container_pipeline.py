"""What users deploy, run as a cluster would run it: the images built by
`make images` (layer cache reused), and the compiled pipeline's steps executed in
them by KFP's DockerRunner against the local stack. The Spark step runs
`spark-submit` of the job inside the Spark image with the image's own jars."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest

from dfp_core import __version__, lineage
from dfp_core.errors import DfpError
from dfp_core.kronodroid.generator import generate
from tests.images import PIPELINE_IMAGES, build_env, build_images, skip_without_disk
from tests.inputs import archive_rows, csv_text

pytestmark = [pytest.mark.docker, pytest.mark.slow]
REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN_IMAGE = f"dfp/kronodroid-train:{__version__}"
SPARK_IMAGE = f"dfp/kronodroid-spark:{__version__}"


@pytest.fixture(scope="module")
def images():
    from dfp_kfp.docker_engine import DockerError, docker_client

    try:
        client = docker_client()
    except DockerError as exc:
        pytest.skip(f"{exc} (tools/scripts/docker_engine.sh installs and starts one, as root)")
    built = build_images(*PIPELINE_IMAGES)
    assert {i["image"] for i in built["images"].values()} == {TRAIN_IMAGE, SPARK_IMAGE}
    return client


def test_the_images_run_as_their_non_root_user_and_hold_what_the_steps_run(images):
    for image in (TRAIN_IMAGE, SPARK_IMAGE):
        attrs = images.images.get(image).attrs["Config"]
        assert attrs["User"] == "10001:10001", image
        out = images.containers.run(image, ["python3", "-c", "import os, kfp, dfp_core; print(os.getuid(), os.environ['DFP_IMAGE'])"],
                                    remove=True).decode().split()
        assert out == ["10001", image]
    # The operator's `driver` entry runs spark-submit of the job file in the image.
    job = "/opt/dfp/engines/spark_engine/dfp_spark/kronodroid_iceberg_job.py"
    help_text = images.containers.run(SPARK_IMAGE, ["driver", "--master", "local[1]", job, "--help"], remove=True).decode()
    assert "--run-branch" in help_text and "--max-shrink" in help_text


def test_the_pipeline_runs_in_the_images(images, rt, stack, lakefs, tmp_path):
    from dfp_kfp.local_run import PipelineStepError, run_pipeline_locally

    data = tmp_path / "data"
    generate(data, 300, seed=12)
    repo = "dock" + uuid.uuid4().hex[:8]
    result = run_pipeline_locally(
        rt, runner="docker", pipeline_root=tmp_path / "root", input_dir=str(data), lakefs_repository=repo,
        run_id="in-docker", max_epochs=1, batch_size=64, latent_dim=8, hidden_dims="32,16", accelerator="cpu",
        model_name=f"kronodroid_autoencoder_{repo}", evaluate_baselines=False,
    )
    head = lakefs.resolve_commit(repo, "main")
    assert result["lakefs_commit"] == head and lakefs.commit_metadata(repo, head)["dfp.run_id"] == "in-docker"
    version = rt.mlflow.get_model_version(result["model_name"], result["model_version"])
    assert set(lineage.LINEAGE_TAGS) <= set(version.tags) and version.tags["data.lakefs_ref"] == head
    # Training ran in the training image, in a container, on the image's interpreter.
    run = rt.mlflow.get_run(version.run_id).data.tags
    assert run["dfp.image"] == TRAIN_IMAGE and run["dfp.python"] == "/opt/venv/bin/python3"
    assert len(run["dfp.container"]) == 64 and run["dfp.code_version"].startswith("git:")
    # The transform ran in the Spark image: its commit says so.
    run_commit = lakefs.resolve_commit(repo, "run-in-docker")
    assert lakefs.commit_metadata(repo, run_commit)["dfp.code_version"].startswith("git:")

    # A containerised step that fails leaves main as it was.
    empty = tmp_path / "header-only" / "real_device"
    empty.mkdir(parents=True)
    _, rows = archive_rows(data / "real_device" / "real_legitimate_v1.zip")
    (empty / "real_extra.csv").write_text(csv_text(rows[:1]))  # a header, no data rows
    # It fails fast, which is when KFP's DockerRunner can lose the container's exit status
    # (kubeflow/pipelines#13332): the error must name the step either way.
    with pytest.raises(PipelineStepError, match="step kronodroid-spark-transform failed"):
        run_pipeline_locally(rt, runner="docker", pipeline_root=tmp_path / "root2", input_dir=str(empty.parent),
                             lakefs_repository=repo, run_id="in-docker-bad", max_epochs=1, accelerator="cpu",
                             model_name=f"kronodroid_autoencoder_{repo}")
    assert lakefs.resolve_commit(repo, "main") == head
    assert not lakefs.branch_exists(repo, "run-in-docker-bad")


def test_a_missing_image_is_one_clear_line(images, rt, monkeypatch):
    from dfp_kfp import local_run
    from dfp_kfp.docker_engine import require_images

    with pytest.raises(DfpError, match=r"image\(s\) not built: dfp/no-such-image:0; build them with `make images`"):
        require_images(images, ["dfp/no-such-image:0"])
    monkeypatch.setattr("dfp_kfp.components.train_kronodroid_autoencoder_component.TRAIN_IMAGE", "dfp/no-such-image:0")
    with pytest.raises(DfpError, match="not built: dfp/no-such-image:0"):
        local_run.run_pipeline_locally(rt, runner="docker", run_transform=False)


def test_a_build_that_fails_is_one_line_and_keeps_the_built_images(images):
    """A base without Python (an empty image here) fails the build: the script's last line
    names the image and what to do, and the images built before are untouched."""
    before = images.images.get(SPARK_IMAGE).id
    empty = "dfp/test-empty-base:1"
    buffer = io.BytesIO()
    tarfile.open(fileobj=buffer, mode="w").close()  # an image with no files at all
    subprocess.run(["docker", "import", "-", empty], input=buffer.getvalue(), check=True, capture_output=True)
    try:
        done = subprocess.run([str(REPO_ROOT / "tools/scripts/build_images.sh"), "spark"], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=600,
                              env=build_env(DFP_BASE_IMAGE=empty))
        skip_without_disk(done)
        assert done.returncode != 0
        last = done.stderr.strip().splitlines()[-1]
        assert last == (f"error: building {SPARK_IMAGE} failed (the build log is above); fix the cause and run "
                        "`make images` again"), last
        assert images.images.get(SPARK_IMAGE).id == before
    finally:
        subprocess.run(["docker", "rmi", "-f", empty], capture_output=True)


def test_a_disk_that_cannot_keep_its_reserve_refuses_the_build_before_it_starts(images):
    """DFP_IMAGES_KEEP_FREE_MB (the suite keeps room for its later tests) is added to what the
    builds need: past the free space, exit 75 with one line naming it, and nothing is built.
    A value that is not a whole number of MB is refused by name."""
    before = images.images.get(SPARK_IMAGE).id
    free_mb = shutil.disk_usage(REPO_ROOT).free // 1_000_000
    script = [str(REPO_ROOT / "tools/scripts/build_images.sh"), "spark"]
    done = subprocess.run(script, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env=build_env(DFP_IMAGES_KEEP_FREE_MB=str(free_mb + 100_000)))
    assert done.returncode == 75, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    kept = (f"MB free needed under {images.info()['DockerRootDir']} ({free_mb + 100_000} MB of it to keep free, "
            "DFP_IMAGES_KEEP_FREE_MB), ")
    assert last.startswith("error: not enough disk to build spark: about ") and kept in last, last
    assert images.images.get(SPARK_IMAGE).id == before
    bad = subprocess.run(script, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                         env=build_env(DFP_IMAGES_KEEP_FREE_MB="3GB"))
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1] == \
        "error: DFP_IMAGES_KEEP_FREE_MB must be a whole number of MB, got '3GB'"
