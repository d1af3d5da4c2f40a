"""lakeFS operations the pipeline needs, on the official Python SDK, with our
errors instead of raw API exceptions."""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import lakefs
import requests
import urllib3
from lakefs.exceptions import (
    ConflictException,
    LakeFSException,
    NotAuthorizedException,
    NotFoundException,
    ServerException,
    api_exception_handler,
)
from lakefs.reference import generate_listing

from dfp_core.errors import LakeFSError, ReadOnlyRefError, RefNotFoundError
from dfp_core.settings import LakeFSSettings

COMMIT_ID = re.compile(r"^[0-9a-f]{64}$")
# lakeFS branch/tag ids: letters, digits, '_' and '-', not starting with '-'.
REF_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,255}$")


def is_commit_id(ref: str) -> bool:
    return bool(COMMIT_ID.match(ref))


def validate_ref_name(name: str, what: str = "branch") -> str:
    if not REF_NAME.match(name):
        raise LakeFSError(f"{name!r} is not a valid lakeFS {what} name (letters, digits, '_' and '-')")
    return name


@dataclass(frozen=True)
class RefInfo:
    name: str
    kind: str  # "branch" | "tag" | "commit"
    commit_id: str


def _other_host(exc: BaseException, endpoint: str) -> str | None:
    """``scheme://host:port`` of a failed urllib3 request that did not go to lakeFS itself (the
    object store, for pre-signed uploads and downloads), or None. Never the URL: a pre-signed
    one carries a signature and the store's key id."""
    pool = getattr(exc, "pool", None)
    if pool is None or not getattr(pool, "host", None):
        return None
    target = f"{pool.scheme}://{pool.host}:{pool.port}"
    lakefs_url = urllib3.util.parse_url(endpoint)
    default = 443 if lakefs_url.scheme == "https" else 80
    return None if (pool.host, pool.port) == (lakefs_url.host, lakefs_url.port or default) else target


def _cause(exc: BaseException) -> str:
    """The innermost cause's class: ConnectionRefusedError, a timeout, ..."""
    while exc.__context__ is not None or getattr(exc, "reason", None) is not None:
        exc = getattr(exc, "reason", None) or exc.__context__
    return exc.__class__.__name__


class LakeFS:
    """A connection to one lakeFS server; methods name the repository explicitly."""

    def __init__(self, settings: LakeFSSettings):
        self.settings = settings.require_credentials()
        self.client = lakefs.Client(
            host=self.settings.endpoint,
            username=self.settings.access_key_id,
            password=self.settings.secret_access_key,
        )

    # ------------------------------------------------------------------ errors

    @contextlib.contextmanager
    def _errors(self, action: str, repo: str | None = None, ref: str | None = None) -> Iterator[None]:
        try:
            # Calls through client.sdk_client raise the generated SDK's exceptions.
            with api_exception_handler():
                yield
        except NotFoundException as exc:
            what = f"repository {repo!r}" if ref is None else f"ref {ref!r} in repository {repo!r}"
            raise RefNotFoundError(f"{action}: {what} not found in lakeFS ({_reason(exc)})") from None
        except NotAuthorizedException as exc:
            if "insufficient permissions" in _reason(exc):  # lakeFS answers 401 for both
                where = f" on repository {repo!r}" if repo else ""
                raise LakeFSError(
                    f"{action}: the lakeFS user of LAKEFS_ACCESS_KEY_ID has no permission for this{where} "
                    f"({_reason(exc)}); its policy does not cover it"
                ) from None
            raise LakeFSError(
                f"{action}: lakeFS at {self.settings.endpoint} rejected the credentials "
                f"({_reason(exc)}); check LAKEFS_ACCESS_KEY_ID / LAKEFS_SECRET_ACCESS_KEY"
            ) from None
        except (ServerException, LakeFSException) as exc:
            raise LakeFSError(f"{action}: {_reason(exc)}") from None
        except (urllib3.exceptions.HTTPError, requests.ConnectionError, OSError) as exc:
            store = _other_host(exc, self.settings.endpoint)
            if store:  # a pre-signed transfer: lakeFS answered, its object store did not
                raise LakeFSError(
                    f"{action}: cannot reach lakeFS's object store at {store} ({_cause(exc)}), through the "
                    "pre-signed URL lakeFS gave; is the object store running and reachable from here?"
                ) from None
            raise LakeFSError(
                f"{action}: cannot reach lakeFS at {self.settings.endpoint} ({exc.__class__.__name__}); "
                "is it running? (`dfp stack up` starts the local one)"
            ) from None

    # ------------------------------------------------------------ repositories

    def repository(self, repo: str) -> lakefs.Repository:
        return lakefs.Repository(repo, client=self.client)

    def ensure_repository(self, repo: str, default_branch: str = "main") -> None:
        validate_ref_name(default_branch)
        with self._errors("create repository", repo):
            self.repository(repo).create(
                storage_namespace=self.settings.namespace_for(repo),
                default_branch=default_branch,
                exist_ok=True,
            )
        if not self.branch_exists(repo, default_branch):
            self.create_branch(repo, default_branch, source_ref=self.default_branch(repo))

    def default_branch(self, repo: str) -> str:
        with self._errors("read repository", repo):
            return self.client.sdk_client.repositories_api.get_repository(repo).default_branch

    def repository_exists(self, repo: str) -> bool:
        try:
            with self._errors("read repository", repo):
                self.client.sdk_client.repositories_api.get_repository(repo)
            return True
        except RefNotFoundError:
            return False

    # -------------------------------------------------------------------- refs

    def branch_exists(self, repo: str, branch: str) -> bool:
        return self._exists(lambda: self.client.sdk_client.branches_api.get_branch(repo, branch), repo, branch)

    def tag_exists(self, repo: str, tag: str) -> bool:
        return self._exists(lambda: self.client.sdk_client.tags_api.get_tag(repo, tag), repo, tag)

    def _exists(self, call, repo: str, ref: str) -> bool:
        try:
            with self._errors("read ref", repo, ref):
                call()
            return True
        except RefNotFoundError:
            return False

    def resolve(self, repo: str, ref: str) -> RefInfo:
        """What ``ref`` is (branch, tag or commit) and the commit id it points at now.

        Order follows lakeFS: a full commit id, then a branch, then a tag, then a
        commit-id prefix.
        """
        if not ref:
            raise RefNotFoundError(f"an empty ref was given for repository {repo!r}")
        if is_commit_id(ref):
            kind = "commit"
        elif self.branch_exists(repo, ref):
            kind = "branch"
        elif self.tag_exists(repo, ref):
            kind = "tag"
        else:
            kind = "commit"
        with self._errors(f"resolve {ref!r}", repo, ref):
            commit_id = self.repository(repo).ref(ref).get_commit().id
        return RefInfo(name=ref, kind=kind, commit_id=commit_id)

    def resolve_commit(self, repo: str, ref: str) -> str:
        return self.resolve(repo, ref).commit_id

    def require_branch(self, repo: str, ref: str) -> None:
        """lakeFS only accepts writes on branches; say so before Spark tries."""
        info = self.resolve(repo, ref)
        if info.kind != "branch":
            raise ReadOnlyRefError(
                f"cannot write to {ref!r} in repository {repo!r}: it is a {info.kind}, and lakeFS "
                "accepts writes only on branches; write to a branch and commit instead"
            )

    def create_branch(self, repo: str, branch: str, source_ref: str, exist_ok: bool = False) -> str:
        """Create ``branch`` at ``source_ref``; returns the commit id it starts from."""
        validate_ref_name(branch)
        if self.tag_exists(repo, branch):
            # A branch would shadow the tag of the same name (lakeFS resolves
            # branches first) and silently redirect every path that names it.
            raise LakeFSError(f"cannot create branch {branch!r}: a tag of that name exists in {repo!r}")
        with self._errors(f"create branch {branch!r} from {source_ref!r}", repo, source_ref):
            self.repository(repo).branch(branch).create(source_reference=source_ref, exist_ok=exist_ok)
        return self.resolve_commit(repo, branch)

    def delete_branch(self, repo: str, branch: str, missing_ok: bool = True) -> bool:
        try:
            with self._errors(f"delete branch {branch!r}", repo, branch):
                self.repository(repo).branch(branch).delete()
            return True
        except RefNotFoundError:
            if missing_ok:
                return False
            raise

    def create_tag(self, repo: str, tag: str, ref: str) -> str:
        """Create an immutable tag; idempotent when it already points at ``ref``.

        lakeFS refuses a tag whose name is an existing branch (409).
        """
        validate_ref_name(tag, "tag")
        target = self.resolve_commit(repo, ref)
        with self._errors(f"create tag {tag!r} at {ref!r}", repo, ref):
            try:
                self.repository(repo).tag(tag).create(target)
            except ConflictException as exc:
                if not self.tag_exists(repo, tag):
                    raise LakeFSError(f"cannot create tag {tag!r}: {_reason(exc)}") from None
                existing = self.resolve_commit(repo, tag)
                if existing != target:
                    raise LakeFSError(f"tag {tag!r} already exists at {existing}, not at {target}") from None
        return target

    def delete_tag(self, repo: str, tag: str) -> None:
        with self._errors(f"delete tag {tag!r}", repo, tag):
            self.repository(repo).tag(tag).delete()

    # ----------------------------------------------------------------- commits

    def commit(self, repo: str, branch: str, message: str, metadata: dict[str, str] | None = None,
               allow_empty: bool = False) -> str:
        metadata = {k: str(v) for k, v in (metadata or {}).items()}
        with self._errors(f"commit on {branch!r}", repo, branch):
            ref = self.repository(repo).branch(branch).commit(
                message=message, metadata=metadata, allow_empty=allow_empty
            )
            return ref.get_commit().id

    def merge(self, repo: str, source_ref: str, target_branch: str, message: str | None = None,
              metadata: dict[str, str] | None = None) -> str:
        """Merge ``source_ref`` into ``target_branch``; returns the merge commit id."""
        kwargs = {}
        if message:
            kwargs["message"] = message
        if metadata:
            kwargs["metadata"] = {k: str(v) for k, v in metadata.items()}
        with self._errors(f"merge {source_ref!r} into {target_branch!r}", repo, source_ref):
            try:
                result = self.repository(repo).ref(source_ref).merge_into(target_branch, **kwargs)
            except ConflictException as exc:
                raise LakeFSError(
                    f"merge {source_ref!r} into {target_branch!r} conflicts ({_reason(exc)}); "
                    f"{target_branch!r} is unchanged"
                ) from None
        return result if is_commit_id(result) else self.resolve_commit(repo, target_branch)

    def branches(self, repo: str, prefix: str = "") -> dict[str, str]:
        """Branch name -> head commit id, for names starting with ``prefix``."""
        return self._refs("list branches", self.client.sdk_client.branches_api.list_branches, repo, prefix)

    def tags(self, repo: str, prefix: str = "") -> dict[str, str]:
        """Tag name -> commit id, for names starting with ``prefix``."""
        return self._refs("list tags", self.client.sdk_client.tags_api.list_tags, repo, prefix)

    def _refs(self, action: str, list_call, repo: str, prefix: str) -> dict[str, str]:
        # The API's listing carries each ref's commit id; the SDK's Branch/Tag objects drop
        # it and would fetch every commit again, one request per ref.

        with self._errors(action, repo):
            return {ref.id: ref.commit_id for ref in generate_listing(list_call, repo, prefix=prefix or None)}

    def commit_time(self, repo: str, ref: str) -> float:
        """When the commit ``ref`` points at was made (seconds since the epoch)."""
        with self._errors(f"read commit {ref!r}", repo, ref):
            return float(self.repository(repo).ref(ref).get_commit().creation_date)

    def is_merged_into(self, repo: str, ref: str, branch: str) -> bool:
        """Whether the commit ``ref`` points at is in ``branch``'s history."""
        commit = self.resolve_commit(repo, ref)
        with self._errors(f"merge base of {ref!r} and {branch!r}", repo, ref):
            result = self.client.sdk_client.refs_api.find_merge_base(repo, ref, branch)
        return result.base_commit_id == commit

    def uncommitted_count(self, repo: str, branch: str, limit: int = 1000) -> int:
        """Objects changed on ``branch`` since its head commit (at most ``limit`` counted)."""
        with self._errors(f"list uncommitted changes of {branch!r}", repo, branch):
            return sum(1 for _ in self.repository(repo).branch(branch).uncommitted(max_amount=limit))

    def commits_between(self, repo: str, older: str, newer: str, limit: int = 1000) -> list[dict[str, Any]]:
        """The commits in ``newer``'s history since its merge base with ``older``, newest first
        (at most ``limit``): id, message, creation date, and the transform run id where one made it."""
        self.resolve_commit(repo, older)  # a ref that does not resolve is named as such
        with self._errors(f"log of {newer!r} since {older!r}", repo, newer):
            stop = self.client.sdk_client.refs_api.find_merge_base(repo, older, newer).base_commit_id
            commits = []
            for commit in self.repository(repo).ref(newer).log(max_amount=limit, stop_at=stop):
                if commit.id == stop:
                    break
                commits.append({"id": commit.id, "message": commit.message, "created": commit.creation_date,
                                 "run_id": (commit.metadata or {}).get("dfp.run_id")})
            return commits

    def changed_objects(self, repo: str, older: str, newer: str, prefix: str = "", limit: int = 10_000
                        ) -> list[dict[str, str]]:
        """Objects under ``prefix`` that differ from ``older`` to ``newer``: path and type
        (added, removed, changed), at most ``limit``."""
        with self._errors(f"diff {older!r}..{newer!r}", repo, newer):
            return [{"path": change.path, "type": change.type}
                    for change in self.repository(repo).ref(older).diff(newer, max_amount=limit, prefix=prefix)]

    def commit_metadata(self, repo: str, ref: str) -> dict[str, str]:
        with self._errors(f"read commit {ref!r}", repo, ref):
            return dict(self.repository(repo).ref(ref).get_commit().metadata or {})

    # ----------------------------------------------------------------- objects

    def stat(self, repo: str, ref: str, path: str):
        """Object info, or None when the object does not exist at that ref."""
        try:
            with self._errors(f"stat {path!r}", repo, ref):
                return self.repository(repo).ref(ref).object(path).stat()
        except RefNotFoundError:
            return None

    def list_paths(self, repo: str, ref: str, prefix: str = "") -> list[str]:
        with self._errors(f"list {prefix!r}", repo, ref):
            return [obj.path for obj in self.repository(repo).ref(ref).objects(prefix=prefix)]

    def read_bytes(self, repo: str, ref: str, path: str) -> bytes:
        with self._errors(f"read {path!r}", repo, ref):
            with self.repository(repo).ref(ref).object(path).reader(mode="rb") as handle:
                return handle.read()

    def upload_file(self, repo: str, branch: str, path: str, local: Path,
                    metadata: dict[str, str] | None = None) -> None:
        """Stream a local file to ``branch`` (constant memory, any size)."""
        url = f"{self.settings.endpoint}/api/v1/repositories/{repo}/branches/{branch}/objects"
        headers = {"Content-Type": "application/octet-stream"}
        for key, value in (metadata or {}).items():
            headers[f"X-Lakefs-Meta-{key}"] = value
        try:
            with open(local, "rb") as body:
                resp = requests.post(
                    url, params={"path": path}, data=body, headers=headers, timeout=600,
                    auth=(self.settings.access_key_id, self.settings.secret_access_key),
                )
        except requests.RequestException as exc:
            raise LakeFSError(f"upload {local} to lakefs://{repo}/{branch}/{path}: {exc}") from None
        if resp.status_code == 404:
            raise RefNotFoundError(f"upload {path!r}: branch {branch!r} of repository {repo!r} not found")
        if resp.status_code >= 300:
            raise LakeFSError(f"upload {local} to lakefs://{repo}/{branch}/{path}: HTTP {resp.status_code} {resp.text[:200]}")

    def upload_bytes(self, repo: str, branch: str, path: str, data: bytes) -> None:
        with self._errors(f"upload {path!r}", repo, branch):
            self.repository(repo).branch(branch).object(path).upload(data=data, mode="wb")

    def delete_object(self, repo: str, branch: str, path: str) -> None:
        with self._errors(f"delete {path!r}", repo, branch):
            self.repository(repo).branch(branch).object(path).delete()


def _reason(exc: Exception) -> str:
    """The server's message without the SDK's multi-line dump."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    status = getattr(exc, "status_code", None) or getattr(exc, "status", None)
    reason = getattr(exc, "reason", None)
    if status or reason:
        return f"HTTP {status} {reason or ''}".strip()
    return str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__

