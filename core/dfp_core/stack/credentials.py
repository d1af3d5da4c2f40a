"""The stack's generated secrets: lakeFS's key pairs and encryption secret, the s3 profile's
and MLflow's auth app's credentials, the model-signing key pair; kept in ``stack.env`` (0600)."""

from __future__ import annotations

import os
import secrets
import string

from dfp_core.tracking import signing
from dfp_core.settings import STACK_ENV_FILE, StackSettings, read_env_file
from dfp_core.stack import seaweedfs
from dfp_core.stack.state import private_home

# Where the home has the ACL server, the admin's pair is kept under these names.
ADMIN_KEY_ENV = ("DFP_LAKEFS_ADMIN_ACCESS_KEY_ID", "DFP_LAKEFS_ADMIN_SECRET_ACCESS_KEY")
# MLflow's basic-auth app: the admin user it creates on its first start is the stack's user.
MLFLOW_ADMIN = "admin"


def _random(alphabet: str, length: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def admin_keys(creds: dict[str, str]) -> tuple[str, str]:
    """lakeFS's admin key pair: ``DFP_LAKEFS_ADMIN_*`` in a home with the ACL server, where
    ``LAKEFS_*`` is the pipeline user's pair; else ``LAKEFS_*``."""
    names = ADMIN_KEY_ENV if creds.get(ADMIN_KEY_ENV[0]) else ("LAKEFS_ACCESS_KEY_ID", "LAKEFS_SECRET_ACCESS_KEY")
    return creds[names[0]], creds[names[1]]


def ensure_credentials(settings: StackSettings, profile: str = "local", acl: bool = False) -> dict[str, str]:
    """Generate the key pairs and server secrets once; keep them 0600."""
    path = settings.home / STACK_ENV_FILE
    values = read_env_file(path)
    alnum = string.ascii_letters + string.digits
    upper = string.ascii_uppercase + string.digits
    required = ("LAKEFS_ACCESS_KEY_ID", "LAKEFS_SECRET_ACCESS_KEY", "DFP_LAKEFS_ENCRYPT_SECRET")
    if not all(values.get(key) for key in required):
        values.update(
            {
                # lakeFS access key ids must be at most 20 characters.
                "LAKEFS_ACCESS_KEY_ID": "AKIADFP" + _random(upper, 13),
                "LAKEFS_SECRET_ACCESS_KEY": _random(alnum, 40),
                "DFP_LAKEFS_ENCRYPT_SECRET": _random(alnum, 48),
            }
        )
    if acl and not values.get(ADMIN_KEY_ENV[0]):
        values.update({ADMIN_KEY_ENV[0]: "AKIADFP" + _random(upper, 13), ADMIN_KEY_ENV[1]: _random(alnum, 40)})
    if profile == "s3":
        for key, make in (("DFP_S3_ACCESS_KEY_ID", lambda: "DFPS3" + _random(upper, 15)),
                          ("DFP_S3_SECRET_ACCESS_KEY", lambda: _random(alnum, 40)),
                          ("DFP_POSTGRES_PASSWORD", lambda: _random(alnum, 32))):
            values.setdefault(key, make())
        # New repositories get s3:// storage namespaces in the stack's bucket.
        values["LAKEFS_STORAGE_NAMESPACE"] = f"s3://{seaweedfs.BUCKETS[0]}/{{repo}}"
    if settings.mlflow_auth_for(profile):
        # The auth app's admin user (created on its first start) is the stack's MLflow user;
        # MLflow's clients read the pair under these names. Kept if auth is turned off and on.
        for key, make in (("MLFLOW_TRACKING_USERNAME", lambda: MLFLOW_ADMIN),
                          ("MLFLOW_TRACKING_PASSWORD", lambda: _random(alnum, 32)),
                          ("DFP_MLFLOW_FLASK_SECRET", lambda: _random(alnum, 48))):
            values.setdefault(key, make())
    # The key pair training signs models with and loading verifies them with (files beside
    # this one; a key MLflow never holds).
    private, public = signing.ensure_key_pair(settings.home / signing.KEY_DIR)
    values["DFP_MODEL_SIGNING_KEY"], values["DFP_MODEL_SIGNING_PUBLIC_KEY"] = str(private), str(public)
    # Endpoints follow the configured ports on every start.
    values["LAKEFS_ENDPOINT"] = settings.lakefs_endpoint
    values["MLFLOW_TRACKING_URI"] = settings.mlflow_endpoint
    private_home(settings.home)
    body = "# Written by `dfp stack up`. Secrets: keep this file private.\n" + "".join(
        f"{key}={value}\n" for key, value in sorted(values.items())
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(body)
    os.chmod(path, 0o600)
    return values
