"""Configuration, read in one place: the environment, with the local stack's env
file as a fallback, so that commands work right after ``dfp stack up``.

Precedence: explicit arguments > the given environment > ``$DFP_HOME/stack.env``
> defaults. Entry points call :meth:`Settings.from_env` once with ``os.environ``;
nothing below them reads the environment. Secrets are only ever read from the
environment or that 0600 file, and never printed (``repr=False``).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from dfp_core.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
STACK_ENV_FILE = "stack.env"
STACK_PROFILES = ("local", "s3")


def dfp_home(env: Mapping[str, str]) -> Path:
    """State of the local stack (data, logs, credentials). Ignored by git."""
    return Path(env.get("DFP_HOME") or REPO_ROOT / ".dfp").expanduser().resolve()


def cache_dir(env: Mapping[str, str]) -> Path:
    """Downloads and builds shared by every clone: lakeFS binary, Spark jars."""
    base = env.get("DFP_CACHE_DIR") or Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dfp"
    return Path(base).expanduser().resolve()


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a KEY=VALUE file (comments and blank lines skipped)."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise ConfigError(f"{path}:{lineno}: expected KEY=VALUE")
        key, value = line.split("=", 1)
        values[key.strip()] = value.strip().strip('"').strip("'")
    return values


def effective_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` layered over the local stack's env file (found through ``env``'s DFP_HOME)."""
    merged = read_env_file(dfp_home(env) / STACK_ENV_FILE)
    merged.update(env)
    return merged


def _int(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{key} must be an integer, got {raw!r}") from None


def _flag(env: Mapping[str, str], key: str) -> bool:
    return env.get(key, "").lower() in ("1", "true", "yes")


def _replace(obj, overrides: Mapping[str, Any]):
    """``dataclasses.replace`` with the overrides that are not None."""
    return dataclasses.replace(obj, **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class LakeFSSettings:
    endpoint: str = "http://127.0.0.1:8000"
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    repository: str = "kronodroid"
    branch: str = "main"
    # Where a new repository stores its objects; None = local blockstore.
    storage_namespace: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "LakeFSSettings":
        return cls(
            endpoint=(env.get("LAKEFS_ENDPOINT") or cls.endpoint).rstrip("/"),
            access_key_id=env.get("LAKEFS_ACCESS_KEY_ID") or None,
            secret_access_key=env.get("LAKEFS_SECRET_ACCESS_KEY") or None,
            repository=env.get("LAKEFS_REPOSITORY") or cls.repository,
            branch=env.get("LAKEFS_BRANCH") or cls.branch,
            storage_namespace=env.get("LAKEFS_STORAGE_NAMESPACE") or None,
        )

    def require_credentials(self) -> "LakeFSSettings":
        if not self.access_key_id or not self.secret_access_key:
            raise ConfigError(
                "lakeFS credentials are not set: export LAKEFS_ACCESS_KEY_ID and "
                "LAKEFS_SECRET_ACCESS_KEY, or start the local stack with `dfp stack up`"
            )
        return self

    def to_env(self) -> dict[str, str]:
        """These settings as the variables :meth:`from_env` reads, for a child process
        (the Spark job) that must talk to the same lakeFS as its parent."""
        values = {
            "LAKEFS_ENDPOINT": self.endpoint, "LAKEFS_ACCESS_KEY_ID": self.access_key_id,
            "LAKEFS_SECRET_ACCESS_KEY": self.secret_access_key, "LAKEFS_REPOSITORY": self.repository,
            "LAKEFS_BRANCH": self.branch, "LAKEFS_STORAGE_NAMESPACE": self.storage_namespace,
        }
        return {k: v for k, v in values.items() if v}

    def namespace_for(self, repository: str) -> str:
        if self.storage_namespace:
            return self.storage_namespace.rstrip("/").replace("{repo}", repository)
        return f"local://{repository}"


@dataclass(frozen=True)
class MLflowSettings:
    tracking_uri: str = "http://127.0.0.1:5000"
    experiment_name: str = "kronodroid_autoencoder"
    model_name: str = "kronodroid_autoencoder"
    model_alias: str = "candidate"
    # A tracking server with MLflow's basic-auth app: MLflow's own variable names.
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    # The key training signs a model's files with (dfp_core.tracking.signing): a PEM file
    # (DFP_MODEL_SIGNING_KEY, stack.env names the stack's) or its text (DFP_MODEL_SIGNING_KEY_PEM,
    # from a Kubernetes Secret); and the public key that loading verifies them with.
    signing_key: Path | None = None
    signing_key_pem: str | None = field(default=None, repr=False)
    verify_key: Path | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "MLflowSettings":
        return cls(
            tracking_uri=env.get("MLFLOW_TRACKING_URI") or cls.tracking_uri,
            experiment_name=env.get("MLFLOW_EXPERIMENT_NAME") or cls.experiment_name,
            model_name=env.get("DFP_MODEL_NAME") or cls.model_name,
            model_alias=env.get("DFP_MODEL_ALIAS") or cls.model_alias,
            username=env.get("MLFLOW_TRACKING_USERNAME") or None,
            password=env.get("MLFLOW_TRACKING_PASSWORD") or None,
            signing_key=Path(env["DFP_MODEL_SIGNING_KEY"]) if env.get("DFP_MODEL_SIGNING_KEY") else None,
            signing_key_pem=env.get("DFP_MODEL_SIGNING_KEY_PEM") or None,
            verify_key=Path(env["DFP_MODEL_SIGNING_PUBLIC_KEY"]) if env.get("DFP_MODEL_SIGNING_PUBLIC_KEY") else None,
        )

    def signing_key_text(self) -> str | None:
        """The signing key's PEM, or None where none is configured; a named file that cannot
        be read is an error (a misconfigured key must not register unsigned models quietly)."""
        if self.signing_key_pem:
            return self.signing_key_pem
        if self.signing_key is None:
            return None
        try:
            return self.signing_key.read_text()
        except OSError as exc:
            raise ConfigError(f"DFP_MODEL_SIGNING_KEY names {self.signing_key}, which cannot be read "
                              f"({exc.strerror}); fix the path, or unset it to register unsigned models") from None

    def credential_env(self) -> dict[str, str]:
        """The credentials as a child process's environment (MLflow's client reads them there)."""
        if not (self.username and self.password):
            return {}
        return {"MLFLOW_TRACKING_USERNAME": self.username, "MLFLOW_TRACKING_PASSWORD": self.password}


def _class_archive_dir(env: Mapping[str, str]) -> Path | None:
    value = (env.get("DFP_SPARK_CLASS_ARCHIVE") or "").strip()
    if value.lower() in ("0", "off", "false", "no"):
        return None
    return Path(value).expanduser() if value else cache_dir(env) / "spark-cds"


# How the local driver JVM compiles (DFP_SPARK_DRIVER_JIT). "quick": C1 only
# (-XX:TieredStopAtLevel=1), which spends a third less CPU on a short job, none of it on C2's
# optimising compiles; "full": the JVM's default; "auto": quick for a job of at most
# QUICK_JIT_MAX_ROWS input rows, full otherwise or when the rows are not known.
DRIVER_JIT_MODES = ("auto", "quick", "full")
# On 2 cores `dfp transform` of 4,000 generated rows took 20% less wall time with C1 only, of
# 14,200 rows about the same, and of 142,000 rows (1x KronoDroid) 6% more (bench/README,
# "Where the quickstart's minute goes").
QUICK_JIT_MAX_ROWS = 10_000


def _driver_jit(env: Mapping[str, str]) -> str:
    value = (env.get("DFP_SPARK_DRIVER_JIT") or "auto").strip().lower()
    if value not in DRIVER_JIT_MODES:
        raise ConfigError(f"DFP_SPARK_DRIVER_JIT must be one of {', '.join(DRIVER_JIT_MODES)}, got {value!r}")
    return value


@dataclass(frozen=True)
class SparkSettings:
    master: str = "local[*]"
    driver_memory: str = "4g"
    # Spark's cap on the total size of a collect's task results (spark.driver.maxResultSize;
    # "0": none). A retrieval streams its partitions to Python as they arrive, each bounded
    # in rows, so the driver never holds the total; at 10x KronoDroid it is ~5 GB.
    max_result_size: str = "0"
    # Iceberg warehouse folder inside every lakeFS ref: s3a://<repo>/<ref>/<prefix>
    warehouse_prefix: str = "iceberg"
    shuffle_partitions: int = 8
    # The extra jars (Iceberg runtime, S3A): a folder of them, or already on Spark's
    # classpath (images bake them into $SPARK_HOME/jars).
    jars_dir: Path | None = None
    jars_provided: bool = False
    log_level: str = "WARN"
    java_home: str | None = None
    ui_enabled: bool = False
    # The Python the executors' workers run (Spark's own PYSPARK_PYTHON); default: this interpreter,
    # which holds the project, as it does in the images and on a cluster started from this venv.
    python: str | None = None
    # Where local Spark writes shuffle files and copies of its jars: Spark's own SPARK_LOCAL_DIRS
    # (its first folder), else the system's temporary folder.
    scratch_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()))
    # Where the local driver JVM's class-data-sharing archives are (dfp_core.spark_class_archive);
    # None: none is built or used.
    class_archive_dir: Path | None = None
    # DRIVER_JIT_MODES; "auto" is settled by the job (``for_input_rows``) before its JVM starts.
    driver_jit: str = "auto"

    def for_input_rows(self, rows: int | None) -> "SparkSettings":
        """These settings for a job of ``rows`` input rows (None: not known): "auto" settled
        to "quick" or "full". A JVM started with them compiles as ``driver_jit`` says."""
        if self.driver_jit != "auto":
            return self
        quick = rows is not None and rows <= QUICK_JIT_MAX_ROWS
        return dataclasses.replace(self, driver_jit="quick" if quick else "full")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "SparkSettings":
        return cls(
            master=env.get("SPARK_MASTER") or cls.master,
            driver_memory=env.get("DFP_SPARK_DRIVER_MEMORY") or cls.driver_memory,
            max_result_size=env.get("DFP_SPARK_MAX_RESULT_SIZE") or cls.max_result_size,
            warehouse_prefix=(env.get("DFP_ICEBERG_PREFIX") or cls.warehouse_prefix).strip("/"),
            shuffle_partitions=_int(env, "DFP_SPARK_SHUFFLE_PARTITIONS", cls.shuffle_partitions),
            jars_dir=Path(env["DFP_SPARK_JARS_DIR"]) if env.get("DFP_SPARK_JARS_DIR") else cache_dir(env) / "spark-jars",
            jars_provided=_flag(env, "DFP_SPARK_JARS_PROVIDED"),
            log_level=env.get("DFP_SPARK_LOG_LEVEL") or cls.log_level,
            java_home=env.get("JAVA_HOME") or None,
            ui_enabled=_flag(env, "DFP_SPARK_UI"),
            python=env.get("PYSPARK_PYTHON") or None,
            scratch_dir=Path(env["SPARK_LOCAL_DIRS"].split(",")[0]) if env.get("SPARK_LOCAL_DIRS")
            else Path(tempfile.gettempdir()),
            class_archive_dir=_class_archive_dir(env),
            driver_jit=_driver_jit(env),
        )


@dataclass(frozen=True)
class StackSettings:
    home: Path
    # Where lakeFS and MLflow listen (DFP_STACK_HOST): loopback, or an address of this machine
    # that others must reach too, e.g. the Kubernetes node's bridge (`dfp cluster status`).
    host: str = "127.0.0.1"
    lakefs_port: int = 8000
    mlflow_port: int = 5000
    cache: Path = field(default_factory=lambda: cache_dir({}))  # where the server builds are cached
    lakefs_bin: Path | None = None  # an existing lakeFS binary instead of the cached build
    # "local" (local KV, local blockstore, SQLite) or "s3" (PostgreSQL + SeaweedFS);
    # None: the profile DFP_HOME was set up with, else local.
    profile: str | None = None
    postgres_port: int = 5433
    s3_port: int = 8333
    seaweedfs_bin: Path | None = None  # an existing weed binary instead of the cached build
    postgres_bin_dir: Path | None = None  # where initdb/postgres/psql are, instead of Debian's
    # MLflow's basic-auth app (DFP_MLFLOW_AUTH=1/0); None: on in every profile (it adds under
    # a second to a stack start, bench/README.md), so MLflow's artifacts and tags are not open
    # to whoever reaches the port.
    mlflow_auth: bool | None = None
    # lakeFS's ACL auth server, which holds the pipeline's repository-scoped user
    # (DFP_LAKEFS_ACL=1/0); None: as DFP_HOME was set up, else on in the s3 profile, off in local.
    lakefs_acl: bool | None = None
    lakefs_acl_port: int = 8001

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "StackSettings":
        def path(key: str) -> Path | None:
            return Path(env[key]).expanduser() if env.get(key) else None

        profile = env.get("DFP_STACK_PROFILE") or None
        if profile is not None and profile not in STACK_PROFILES:
            raise ConfigError(f"DFP_STACK_PROFILE must be one of {', '.join(STACK_PROFILES)}, got {profile!r}")
        return cls(
            home=dfp_home(env),
            host=env.get("DFP_STACK_HOST") or cls.host,
            lakefs_port=_int(env, "DFP_LAKEFS_PORT", cls.lakefs_port),
            mlflow_port=_int(env, "DFP_MLFLOW_PORT", cls.mlflow_port),
            cache=cache_dir(env),
            lakefs_bin=path("LAKEFS_BIN"),
            profile=profile,
            postgres_port=_int(env, "DFP_POSTGRES_PORT", cls.postgres_port),
            s3_port=_int(env, "DFP_S3_PORT", cls.s3_port),
            seaweedfs_bin=path("SEAWEEDFS_BIN"),
            postgres_bin_dir=path("DFP_POSTGRES_BIN_DIR"),
            mlflow_auth=_flag(env, "DFP_MLFLOW_AUTH") if env.get("DFP_MLFLOW_AUTH") else None,
            lakefs_acl=_flag(env, "DFP_LAKEFS_ACL") if env.get("DFP_LAKEFS_ACL") else None,
            lakefs_acl_port=_int(env, "DFP_LAKEFS_ACL_PORT", cls.lakefs_acl_port),
        )

    def mlflow_auth_for(self, profile: str) -> bool:
        """Whether MLflow runs its basic-auth app in ``profile``: on unless DFP_MLFLOW_AUTH=0."""
        return self.mlflow_auth is not False  # the same in every profile

    @property
    def lakefs_endpoint(self) -> str:
        return f"http://{self.host}:{self.lakefs_port}"

    @property
    def mlflow_endpoint(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    @property
    def env_file(self) -> Path:
        return self.home / STACK_ENV_FILE


@dataclass(frozen=True)
class ProcessSettings:
    """Where this process stands in a distributed training run, as its launcher said: Lightning's
    DDP launcher (LOCAL_RANK, NODE_RANK), torchrun or a PyTorchJob (RANK, GROUP_RANK)."""

    rank: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "ProcessSettings":
        if env.get("RANK"):  # the global rank, where the launcher gives it
            return cls(rank=_int(env, "RANK", 0))
        # Else any non-zero coordinate is a process other than the global rank zero.
        return cls(rank=max(_int(env, key, 0) for key in ("GROUP_RANK", "NODE_RANK", "LOCAL_RANK")))

    @property
    def is_rank_zero(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class Settings:
    """Every setting of one command, read once by its entry point."""

    lakefs: LakeFSSettings
    mlflow: MLflowSettings
    spark: SparkSettings
    stack: StackSettings
    process: ProcessSettings = ProcessSettings()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """From ``env`` (entry points pass ``os.environ``) over ``$DFP_HOME/stack.env``."""
        env = dict(os.environ if env is None else env)
        merged = effective_env(env)
        return cls(
            lakefs=LakeFSSettings.from_env(merged),
            mlflow=MLflowSettings.from_env(merged),
            spark=SparkSettings.from_env(merged),
            # The stack's own location and ports are never taken from the file it writes.
            stack=StackSettings.from_env(env),
            process=ProcessSettings.from_env(env),
        )

    def override(self, *, lakefs: Mapping[str, Any] | None = None, mlflow: Mapping[str, Any] | None = None,
                 spark: Mapping[str, Any] | None = None, stack: Mapping[str, Any] | None = None) -> "Settings":
        """A copy with command-line values (those not None) over these settings."""
        return Settings(
            lakefs=_replace(self.lakefs, lakefs or {}), mlflow=_replace(self.mlflow, mlflow or {}),
            spark=_replace(self.spark, spark or {}), stack=_replace(self.stack, stack or {}),
            process=self.process,
        )

