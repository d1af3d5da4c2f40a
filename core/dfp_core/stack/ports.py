"""Ports on this machine: whether one is free, a free one, and who holds one."""

from __future__ import annotations

import socket

import psutil


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            return True
        except OSError:
            return False


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free now: for private stacks (tests, benchmarks)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_holder(port: int) -> dict | None:
    """The process listening on ``port`` (pid and command line), when this user may see it."""
    try:
        connections = psutil.net_connections(kind="inet")
    except (psutil.Error, PermissionError):
        return None
    for conn in connections:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            try:
                cmdline = " ".join(psutil.Process(conn.pid).cmdline())[:200]
            except psutil.Error:
                cmdline = "?"
            return {"pid": conn.pid, "cmdline": cmdline}
    return None


def taken_by(port: int) -> str:
    holder = port_holder(port)
    return f"pid {holder['pid']} ({holder['cmdline']})" if holder else "another program"
