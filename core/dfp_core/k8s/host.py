"""The host side of the node: what it must have before anything starts (each missing piece
is one line naming it and its fix), and what ``up`` sets up and ``down`` takes away again
outside the node's processes: the pods' bridge, our iptables chain, the chains kube-proxy and
the kubelet leave, mounts under ``$DFP_HOME/k8s``, and the kubelet's empty cgroups."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import psutil

from dfp_core.errors import StackError
from dfp_core.k8s import layout
from dfp_core.k8s.layout import NodeSettings, Port

DEPS_SCRIPT = "tools/scripts/k8s_node_deps.sh"
BUILD_SCRIPT = "tools/scripts/build_kubernetes.sh"
CNI_DIR = Path("/usr/lib/cni")
CNI_PLUGINS = ("bridge", "host-local", "loopback")
# (tool, why the node needs it, Debian package)
TOOLS = (
    ("containerd", "the node runs its own containerd", "containerd"),
    ("ctr", "images are imported with containerd's ctr", "containerd"),
    ("runc", "containerd starts containers with runc", "runc"),
    ("iptables", "kube-proxy programs Services with iptables", "iptables"),
    ("conntrack", "kube-proxy clears stale Service connections with conntrack", "conntrack"),
    ("ip", "the pods' bridge is made with iproute2", "iproute2"),
)
CGROUP_V1_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "pids")
CGROUP_ROOT = Path("/sys/fs/cgroup")


# --------------------------------------------------------------------------- checks


def check_root() -> None:
    if os.geteuid() != 0:
        raise StackError("the Kubernetes node needs root (containerd, the kubelet, iptables and mounts); "
                         "run `dfp cluster up` as root")


def cgroup_mode(root: Path = CGROUP_ROOT) -> str:
    """``v2`` (unified), ``v1`` (the kubelet's controllers each mounted), or raise."""
    if (root / "cgroup.controllers").is_file():
        wanted = {"cpu", "memory", "pids"}
        have = set((root / "cgroup.controllers").read_text().split())
        if wanted <= have:
            return "v2"
        missing = ", ".join(sorted(wanted - have))
        raise StackError(f"this host's cgroup v2 hierarchy at {root} lacks the {missing} controller(s) the kubelet "
                         "needs; run the node on a host (or VM) with them enabled")
    missing = [c for c in CGROUP_V1_CONTROLLERS if not (root / c).is_dir()]
    if missing:
        raise StackError(f"this host has no cgroup mounts for {', '.join(missing)} under {root}, which the kubelet "
                         "needs to run pods; run the node on a host (or VM) that mounts cgroups")
    return "v1"


def check_tools() -> None:
    """The host's packages the node runs on."""
    for tool, why, package in TOOLS:
        if shutil.which(tool) is None:
            raise StackError(f"{tool} is not installed ({why}); run {DEPS_SCRIPT} as root "
                             f"(apt-get install {package})")
    missing = [name for name in CNI_PLUGINS if not layout.executable(CNI_DIR / name)]
    if missing:
        raise StackError(f"the CNI plugins {', '.join(missing)} are not in {CNI_DIR} (pods get their network from "
                         f"them); run {DEPS_SCRIPT} as root (apt-get install containernetworking-plugins)")


def check_binaries(settings: NodeSettings) -> None:
    """The node's own binaries, built from tools/kubernetes."""
    absent = [name for name in layout.BINARIES if not layout.executable(settings.binary(name))]
    if absent:
        raise StackError(f"the node's binaries are not built ({', '.join(absent[:3])}"
                         f"{'...' if len(absent) > 3 else ''} missing in {settings.bin_dir}); "
                         f"run {BUILD_SCRIPT} (10-15 minutes the first time, needs Go >= 1.26)")


def port_holders(ports: list[Port] | tuple[Port, ...]) -> dict[Port, str]:
    """Who holds each of ``ports`` (a listener on its address or on every address), by one
    scan of the host's sockets (a scan reads every process's descriptors: slow)."""
    holders: dict[Port, str] = {}
    for kind in sorted({p.proto for p in ports}):
        try:
            connections = psutil.net_connections(kind=kind)
        except (psutil.Error, PermissionError):
            continue
        for conn in connections:
            listening = conn.status == psutil.CONN_LISTEN if kind == "tcp" else not conn.raddr
            if not (listening and conn.laddr):
                continue
            for port in ports:
                if (port.proto == kind and port not in holders and conn.laddr.port == port.port
                        and conn.laddr.ip in {port.host(), "0.0.0.0", "::"}):
                    holders[port] = _describe(conn.pid)
    return holders


def _describe(pid: int | None) -> str:
    if not pid:
        return "another program"
    try:
        return f"pid {pid} ({' '.join(psutil.Process(pid).cmdline())[:200]})"
    except psutil.Error:
        return f"pid {pid}"


def check_ports(components: list[str]) -> None:
    wanted = [port for port in layout.PORTS if port.component in components]
    holders = port_holders(wanted)
    for port in wanted:
        if port in holders:
            raise StackError(f"port {port.port}/{port.proto} on {port.host()} is taken by {holders[port]}, so "
                             f"{port.component} cannot start; stop that program (or its node: `dfp cluster down` "
                             "with its DFP_HOME)")


def _routes() -> list[dict]:
    out = subprocess.run(["ip", "-j", "-4", "route", "show", "table", "all"], capture_output=True, text=True)
    try:
        return json.loads(out.stdout or "[]")
    except ValueError:
        return []


def check_network(routes: list[dict] | None = None) -> None:
    """The pods' subnet must not be routed elsewhere already (another network, VPN, cluster)."""
    ours = ipaddress.ip_network(layout.POD_CIDR)
    for route in _routes() if routes is None else routes:
        dst, dev = route.get("dst", ""), route.get("dev", "")
        if dst in ("default", "") or dev == layout.BRIDGE or route.get("type") in ("local", "broadcast"):
            continue
        try:
            net = ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False)
        except ValueError:
            continue
        if net.overlaps(ours):
            raise StackError(f"the pods' subnet {layout.POD_CIDR} overlaps {dst} routed via {dev or '?'}; "
                             "remove that network (or its route) before starting the node")


def check_host(settings: NodeSettings, components: list[str]) -> str:
    """Everything ``up`` needs before it starts anything; the cgroup mode."""
    check_root()
    mode = cgroup_mode()
    check_tools()
    check_binaries(settings)
    check_ports(components)
    check_network()
    return mode


# --------------------------------------------------------------------------- commands


def _run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise StackError(f"`{' '.join(cmd)}` failed: {lines[-1] if lines else f'exit code {proc.returncode}'}")
    return proc


# --------------------------------------------------------------------------- bridge


def bridge_exists() -> bool:
    return Path("/sys/class/net", layout.BRIDGE).exists()


def ensure_bridge() -> None:
    """The pods' bridge with the node's address on it (the CNI bridge plugin finds it ready),
    and forwarding on (pods reach Services through the host)."""
    if not bridge_exists():
        _run(["ip", "link", "add", layout.BRIDGE, "type", "bridge"])
    cidr = f"{layout.host_address()}/{ipaddress.ip_network(layout.POD_CIDR).prefixlen}"
    have = _run(["ip", "-4", "-o", "addr", "show", "dev", layout.BRIDGE]).stdout
    if f" {cidr} " not in have:
        _run(["ip", "addr", "add", cidr, "dev", layout.BRIDGE])
    _run(["ip", "link", "set", layout.BRIDGE, "up"])
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")


def delete_bridge() -> bool:
    if not bridge_exists():
        return False
    _run(["ip", "link", "delete", layout.BRIDGE], check=False)
    return True


# --------------------------------------------------------------------------- iptables


def forward_rules() -> list[list[str]]:
    """Our chain: pods may talk to pods; whatever else a pod sends is forwarded nowhere. What
    pods send to the host (its services, the API server, DNS) is input, not forwarding."""
    return [["-i", layout.BRIDGE, "-o", layout.BRIDGE, "-j", "ACCEPT"],
            ["-i", layout.BRIDGE, "-j", "DROP"]]


def ensure_iptables() -> None:
    chain = layout.IPTABLES_CHAIN
    if _run(["iptables", "-w", "-n", "-L", chain], check=False).returncode != 0:
        _run(["iptables", "-w", "-N", chain])
    _run(["iptables", "-w", "-F", chain])
    for rule in forward_rules():
        _run(["iptables", "-w", "-A", chain, *rule])
    if _run(["iptables", "-w", "-C", "FORWARD", "-j", chain], check=False).returncode != 0:
        # First, before dockerd's rules and the FORWARD policy (DROP where dockerd runs).
        _run(["iptables", "-w", "-I", "FORWARD", "1", "-j", chain])


def _iptables_tools() -> list[str]:
    return [tool for tool in ("iptables", "ip6tables") if shutil.which(tool)]


def chains_with_prefix(save_output: str, prefixes: tuple[str, ...]) -> tuple[list[str], list[list[str]]]:
    """From one table's ``iptables-save``: the chains named with ``prefixes``, and the rules of
    other chains that jump to them (as ``-D`` arguments)."""
    chains = [line[1:].split()[0] for line in save_output.splitlines()
              if line.startswith(":") and line[1:].startswith(prefixes)]
    jumps = []
    for line in save_output.splitlines():
        if not line.startswith("-A "):
            continue
        args = shlex.split(line)
        if args[1].startswith(prefixes):
            continue
        if any(a in ("-j", "-g") and i + 1 < len(args) and args[i + 1] in chains for i, a in enumerate(args)):
            jumps.append(["-D", *args[1:]])
    return chains, jumps


def delete_chains(prefixes: tuple[str, ...]) -> list[str]:
    """Remove the chains named with ``prefixes`` from every table, and the jumps to them;
    the chains removed, as ``table/chain``."""
    removed = []
    for tool in _iptables_tools():
        for table in ("filter", "nat", "mangle"):
            saved = _run([f"{tool}-save", "-t", table], check=False).stdout
            chains, jumps = chains_with_prefix(saved, prefixes)
            for rule in jumps:
                _run([tool, "-w", "-t", table, *rule], check=False)
            for chain in chains:
                _run([tool, "-w", "-t", table, "-F", chain], check=False)
            for chain in chains:
                if _run([tool, "-w", "-t", table, "-X", chain], check=False).returncode == 0:
                    removed.append(f"{table}/{chain}")
    return removed


def our_chains_left() -> list[str]:
    """Chains of ours (and of kube-proxy and the kubelet, which only our node runs here) in
    any table: empty after ``down``."""
    left = []
    for tool in _iptables_tools():
        for table in ("filter", "nat", "mangle"):
            chains, _ = chains_with_prefix(_run([f"{tool}-save", "-t", table], check=False).stdout,
                                           (layout.IPTABLES_CHAIN, "KUBE-"))
            left += [f"{tool}/{table}/{c}" for c in chains]
    return left


# --------------------------------------------------------------------------- mounts and cgroups


def _unescape(field: str) -> str:
    return field.encode().decode("unicode_escape") if "\\" in field else field


def mounts_under(root: Path, mountinfo: str | None = None) -> list[str]:
    """Mount points at or below ``root``, deepest first."""
    text = Path("/proc/self/mountinfo").read_text() if mountinfo is None else mountinfo
    prefix = str(root).rstrip("/") + "/"
    points = {_unescape(line.split()[4]) for line in text.splitlines() if len(line.split()) > 4}
    mine = [p for p in points if p == str(root) or p.startswith(prefix)]
    return sorted(mine, key=lambda p: (p.count("/"), p), reverse=True)


def unmount_all(root: Path) -> list[str]:
    """Unmount what the kubelet and containerd left mounted under ``root`` (volumes, rootfs,
    shm, network namespaces); lazily where a mount is still busy. The points unmounted."""
    done = []
    for _ in range(3):  # a mount can hide another at the same point
        points = mounts_under(root)
        if not points:
            break
        for point in points:
            if _run(["umount", point], check=False).returncode != 0:
                _run(["umount", "-l", point], check=False)
            done.append(point)
    return done


def remove_pod_cgroups(root: Path = CGROUP_ROOT) -> int:
    """rmdir the kubelet's empty ``kubepods`` cgroups, deepest first; the number removed."""
    removed = 0
    tops = [root / "kubepods"] + [root / c / "kubepods" for c in os.listdir(root)] if root.is_dir() else []
    for top in tops:
        if not top.is_dir():
            continue
        dirs = sorted((Path(d) for d, _, _ in os.walk(top)), key=lambda p: len(p.parts), reverse=True)
        for path in dirs:
            with contextlib.suppress(OSError):
                path.rmdir()
                removed += 1
    return removed


# --------------------------------------------------------------------------- host folders

# Where the kubelet, the CNI library and containerd's shims write outside our folder whatever
# they are told: the device-plugin socket, CNI result caches, shim sockets.
HOST_DIRS = (Path("/var/lib/kubelet"), Path("/var/lib/cni"), Path("/run/containerd"))
CNI_CACHE = Path("/var/lib/cni/results")


def absent_host_dirs() -> list[str]:
    """The host folders the node would create: ``down`` removes them again (when empty)."""
    return [str(d) for d in HOST_DIRS if not d.exists()]


def remove_cni_cache(network: str, cache: Path = CNI_CACHE) -> int:
    """libcni's cached results of our pods (``<network>-<id>-eth0`` and their loopback's
    ``cni-loopback-<id>-lo``); every pod is gone. The number of files removed."""
    try:
        names = os.listdir(cache)
    except OSError:
        return 0
    ids = {n[len(network) + 1:].rsplit("-", 1)[0] for n in names if n.startswith(network + "-")}
    ours = [n for n in names if n.startswith(network + "-") or
            (n.startswith("cni-loopback-") and n[len("cni-loopback-"):].rsplit("-", 1)[0] in ids)]
    for name in ours:
        with contextlib.suppress(OSError):
            (cache / name).unlink()
    return len(ours)


def remove_created_dirs(created: list[str]) -> None:
    """Folders the node created, with the sockets left in them, when nothing else is there."""
    for root in created:
        for base, dirs, files in os.walk(root, topdown=False):
            for name in files:
                path = Path(base, name)
                with contextlib.suppress(OSError):
                    if stat.S_ISSOCK(path.lstat().st_mode):
                        path.unlink()
            with contextlib.suppress(OSError):
                Path(base).rmdir()
