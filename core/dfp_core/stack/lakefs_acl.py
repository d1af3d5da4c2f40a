"""lakeFS's ACL auth server (``contrib/auth/acl`` of the pinned lakeFS module, built beside
lakeFS by ``make setup``): where the stack keeps users other than lakeFS's admin.

lakeFS Community's built-in auth holds one admin credential. Pointed at an auth server
(``auth.api.endpoint``), lakeFS asks that server for users, credentials and policies, and
checks every API and S3-gateway request against the caller's effective policies. lakeFS's
own API refuses to write policies in that mode (its "simplified" UI knows only global
ACLs), so the stack writes the pipeline's repository-scoped policy here, directly.

The server authenticates no caller: it listens on 127.0.0.1 for lakeFS alone.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import requests

from dfp_core.errors import StackError

PIPELINE_USER = "dfp-pipeline"
PIPELINE_GROUP = "DFPPipeline"
PIPELINE_POLICY = "DFPPipelineRepository"
HEALTH_PATH = "/_health"
API = "/api/v1"


def repository_arn(repository: str) -> str:
    return f"arn:lakefs:fs:::repository/{repository}"


def pipeline_statements(repository: str, storage_namespace: str) -> list[dict[str, Any]]:
    """Everything on one repository (its branches, tags, objects and commits, creating and
    deleting it) and attaching its storage namespace; nothing on any other repository, no
    repository listing, no auth action."""
    repo = repository_arn(repository)
    return [
        {"effect": "allow", "action": ["fs:*"], "resource": repo},
        {"effect": "allow", "action": ["fs:*"], "resource": repo + "/*"},
        {"effect": "allow", "action": ["fs:AttachStorageNamespace"],
         "resource": f"arn:lakefs:fs:::namespace/{storage_namespace}"},
    ]


class ACLServer:
    """The few calls of the auth API (lakeFS's ``authorization.yml``) the stack makes."""

    def __init__(self, endpoint: str, timeout: float = 10):
        self.base = endpoint.rstrip("/") + API
        self.timeout = timeout

    def _call(self, method: str, path: str, ok: tuple[int, ...], **kwargs: Any) -> requests.Response:
        try:
            answer = requests.request(method, self.base + path, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise StackError(f"cannot reach lakeFS's ACL server at {self.base}: {exc.__class__.__name__}") from None
        if answer.status_code not in ok:
            raise StackError(f"lakeFS's ACL server refused {method} {path}: HTTP {answer.status_code} "
                             f"{answer.text.strip()[:200]}")
        return answer

    def ensure_user(self, username: str) -> None:
        self._call("POST", "/auth/users", (201, 409), json={"username": username})

    def put_policy(self, name: str, statements: list[dict[str, Any]]) -> None:
        """Create the policy, or replace its statements (the repository may have changed)."""
        body = {"name": name, "statement": statements}
        if self._call("POST", "/auth/policies", (201, 409), json=body).status_code == 409:
            self._call("PUT", f"/auth/policies/{quote(name)}", (200,), json=body)

    def ensure_group(self, group: str, members: tuple[str, ...], policies: tuple[str, ...]) -> None:
        self._call("POST", "/auth/groups", (201, 409), json={"id": group})
        for user in members:
            self._call("PUT", f"/auth/groups/{quote(group)}/members/{quote(user)}", (201, 204, 409))
        for policy in policies:
            self._call("PUT", f"/auth/groups/{quote(group)}/policies/{quote(policy)}", (201, 204, 409))

    def ensure_credentials(self, username: str, access_key_id: str, secret_access_key: str) -> None:
        path = f"/auth/users/{quote(username)}/credentials"
        if self._call("GET", f"{path}/{quote(access_key_id)}", (200, 404)).status_code == 404:
            # As query parameters: that is how the auth API takes a given key pair.
            self._call("POST", path, (201,), params={"access_key": access_key_id, "secret_key": secret_access_key})


def ensure_pipeline_user(endpoint: str, repository: str, storage_namespace: str,
                         access_key_id: str, secret_access_key: str) -> None:
    """The pipeline's user, its policy over ``repository`` only, and its key pair; repeatable."""
    server = ACLServer(endpoint)
    server.ensure_user(PIPELINE_USER)
    server.put_policy(PIPELINE_POLICY, pipeline_statements(repository, storage_namespace))
    server.ensure_group(PIPELINE_GROUP, members=(PIPELINE_USER,), policies=(PIPELINE_POLICY,))
    server.ensure_credentials(PIPELINE_USER, access_key_id, secret_access_key)
