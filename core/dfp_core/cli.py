"""``dfp``: one command per stage. Heavy imports happen inside each command."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from dfp_core.errors import DfpError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
stack_app = typer.Typer(no_args_is_help=True, help="Local lakeFS + MLflow servers.")
app.add_typer(stack_app, name="stack")


def emit(summary: dict) -> None:
    """Machine-readable result: always the last line on stdout."""
    print(json.dumps(summary, sort_keys=True, default=str), flush=True)


@stack_app.command("up")
def stack_up(
    lakefs_port: Optional[int] = typer.Option(None, help="lakeFS port [env DFP_LAKEFS_PORT, default 8000]"),
    mlflow_port: Optional[int] = typer.Option(None, help="MLflow port [env DFP_MLFLOW_PORT, default 5000]"),
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON."),
) -> None:
    """Start lakeFS and MLflow (idempotent) and wait until both are healthy."""
    from dfp_core import stack
    from dfp_core.settings import StackSettings

    result = stack.up(StackSettings.from_env(lakefs_port=lakefs_port, mlflow_port=mlflow_port))
    _print_status(result, as_json)


@stack_app.command("down")
def stack_down() -> None:
    """Stop the processes `up` started; data stays in DFP_HOME."""
    from dfp_core import stack

    stack.down()


@stack_app.command("status")
def stack_status(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Endpoints, pids, health and the credentials file."""
    from dfp_core import stack

    _print_status(stack.status(), as_json)


@stack_app.command("reset")
def stack_reset(yes: bool = typer.Option(False, "--yes", help="Confirm deleting all stack data.")) -> None:
    """Stop the stack and delete DFP_HOME (repositories, MLflow runs, credentials)."""
    from dfp_core import stack

    if not yes:
        raise DfpError("reset deletes every lakeFS repository and MLflow run in DFP_HOME; pass --yes to confirm")
    stack.reset()


def _print_status(result: dict, as_json: bool) -> None:
    if as_json:
        emit(result)
        return
    for name, svc in result["services"].items():
        state = "healthy" if svc["healthy"] else ("running" if svc["running"] else "stopped")
        pid = f" pid {svc['pid']}" if svc["pid"] else ""
        print(f"{name:7s} {state:8s} {svc['endpoint']}{pid}")
    print(f"credentials: {result['credentials_file']}")


def main() -> None:
    try:
        app()
    except DfpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
