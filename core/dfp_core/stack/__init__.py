"""The local stack: a real lakeFS server and a real MLflow tracking server (with its
registry; artifacts served by the server), started as background processes that
outlive the command. Two profiles:

- ``local`` (the default): lakeFS on its local KV and local blockstore, MLflow on
  SQLite and a local artifact folder;
- ``s3``: PostgreSQL holds the lakeFS KV and the MLflow store, and SeaweedFS (an
  S3-compatible object store) holds lakeFS's objects (``s3://`` storage
  namespaces) and MLflow's artifacts, as a deployment runs them.

With ``DFP_LAKEFS_ACL=1`` (the s3 profile's default; fixed when a home's lakeFS is first set
up) lakeFS asks its ACL auth server (``lakefs-acl``) for users and policies: the stack's admin
key pair moves to ``DFP_LAKEFS_ADMIN_*`` and ``LAKEFS_ACCESS_KEY_ID``/``LAKEFS_SECRET_ACCESS_KEY``
are those of the pipeline's user, whose policy covers the configured repository only.

``$DFP_HOME`` holds everything: ``state.json`` (pids and endpoints), ``profile``,
the generated credentials in ``stack.env`` (mode 0600), data and logs. ``down``
stops only processes whose pid *and* start time match what ``up`` recorded.

The package, by job: ``state`` (the home, ``state.json``, the profile), ``credentials``
(``stack.env``), ``servers`` (which servers a profile runs, their binaries, command lines, health and set-up), ``ports``,
``supervision`` (up, down, status, reset, private stacks), and the servers that need more than a
command line: ``postgres`` and ``seaweedfs`` (the s3 profile's), ``lakefs_acl`` (lakeFS's ACL server).
"""

from dfp_core.stack.credentials import ADMIN_KEY_ENV, MLFLOW_ADMIN, admin_keys, ensure_credentials
from dfp_core.stack.ports import free_port, port_free, port_holder
from dfp_core.stack.servers import (ALL_SERVICES, LAKEFS, LAKEFS_ACL, LOOPBACK, MLFLOW, POSTGRES, SEAWEEDFS,
                                     SERVICES, Service, lakefs_acl_binary, lakefs_acl_command, lakefs_binary,
                                     lakefs_command, lakefs_version, mlflow_command, services)
from dfp_core.stack.state import (ACL_MARKER, LAKEFS_CONFIG, PROFILE_FILE, STATE_FILE, ProcessRecord, StackState,
                                  lakefs_acl_of, private_home, profile_of, record_profile)
from dfp_core.stack.supervision import (SUPERVISED_SETTINGS, SUPERVISION_REPORT, SUPERVISOR, Log, await_service, down,
                                        last_error_line, load_supervised_settings, reset, running,
                                        save_supervised_settings, start, status, stop_service, supervision_report,
                                        terminate, up)

__all__ = [
    "ACL_MARKER", "ADMIN_KEY_ENV", "ALL_SERVICES", "LAKEFS", "LAKEFS_ACL", "LAKEFS_CONFIG", "LOOPBACK", "MLFLOW",
    "MLFLOW_ADMIN", "POSTGRES", "PROFILE_FILE", "SEAWEEDFS", "SERVICES", "STATE_FILE", "SUPERVISED_SETTINGS",
    "SUPERVISION_REPORT", "SUPERVISOR", "Log", "ProcessRecord", "Service", "StackState", "admin_keys", "await_service", "down",
    "ensure_credentials", "free_port", "lakefs_acl_binary", "lakefs_acl_command", "lakefs_acl_of", "lakefs_binary",
    "lakefs_command", "lakefs_version", "last_error_line", "load_supervised_settings", "mlflow_command",
    "port_free", "port_holder", "private_home", "profile_of", "record_profile", "reset", "running",
    "save_supervised_settings", "services", "start", "status", "stop_service", "supervision_report", "terminate",
    "up",
]
