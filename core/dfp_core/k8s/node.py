"""``dfp cluster up|status|down``: the node's processes, started in order and supervised like
the local stack's servers (``dfp_core.stack``: each the leader of its own process group,
recorded with its start time in ``$DFP_HOME/k8s/state.json``; ``down`` stops only what
``up`` started).

``up`` checks the host first (root, cgroups, tools, binaries, ports, the pods' subnet) and
starts nothing when one is missing; then it makes the certificates, writes the configs, sets
up the bridge and our iptables chain, and starts containerd, etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, the kubelet, kube-proxy and CoreDNS, each once the
previous one is healthy, and waits until the node is Ready. What already runs healthy is kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import psutil
import requests

from dfp_core import stack
from dfp_core.errors import StackError
from dfp_core.k8s import api, host, images, layout, pki, render
from dfp_core.k8s.layout import NodeSettings
from dfp_core.progress import note
from dfp_core.stack import ProcessRecord, StackState

Log = Callable[[str], None]
READY_TIMEOUT = 180.0
# Set by `up` once it has made the bridge and our chain: `down` in another DFP_HOME leaves them.
HOST_NETWORK_MARKER = "host-network"
# The environment every component gets: nothing of ours (no KUBECONFIG, no proxies).
COMPONENT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Component:
    name: str
    endpoint: str
    startup_timeout: float
    health: Callable[[NodeSettings], bool]


def _http_ok(url: str, verify: bool = True) -> bool:
    try:
        with warnings.catch_warnings():  # the components' self-signed serving certificates
            warnings.simplefilter("ignore")
            return requests.get(url, timeout=2, verify=verify).status_code == 200
    except requests.RequestException:
        return False


def _containerd_healthy(settings: NodeSettings) -> bool:
    if not settings.paths.containerd_socket.exists():
        return False
    try:
        return images.ctr(settings, "version", check=False, timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _etcd_healthy(_: NodeSettings) -> bool:
    try:
        answer = requests.get(f"http://127.0.0.1:{layout.ETCD_METRICS_PORT}/health", timeout=2)
        return answer.status_code == 200 and answer.json().get("health") == "true"
    except (requests.RequestException, ValueError):
        return False


def components(settings: NodeSettings) -> list[Component]:
    """In start order."""
    local = "127.0.0.1"
    return [
        Component("containerd", f"unix://{settings.paths.containerd_socket}", 60, _containerd_healthy),
        Component("etcd", f"https://{local}:{layout.ETCD_CLIENT_PORT}", 60, _etcd_healthy),
        Component("kube-apiserver", pki.api_server_url(), 120, api.healthy),
        Component("kube-controller-manager", f"https://{local}:{layout.CONTROLLER_MANAGER_PORT}", 60,
                  lambda s: _http_ok(f"https://{local}:{layout.CONTROLLER_MANAGER_PORT}/healthz", verify=False)),
        Component("kube-scheduler", f"https://{local}:{layout.SCHEDULER_PORT}", 60,
                  lambda s: _http_ok(f"https://{local}:{layout.SCHEDULER_PORT}/healthz", verify=False)),
        Component("kubelet", f"https://{layout.host_address()}:10250", 60,
                  lambda s: _http_ok(f"http://{local}:{layout.KUBELET_HEALTHZ_PORT}/healthz")),
        Component("kube-proxy", f"http://{local}:{layout.KUBE_PROXY_HEALTHZ_PORT}", 60,
                  lambda s: _http_ok(f"http://{local}:{layout.KUBE_PROXY_HEALTHZ_PORT}/healthz")),
        Component("coredns", f"dns://{layout.host_address()}:53", 60,
                  lambda s: _http_ok(f"http://{local}:{layout.COREDNS_READY_PORT}/ready")),
    ]


def _env() -> dict[str, str]:
    return {"PATH": COMPONENT_PATH, "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}


def _wait_until(done: Callable[[], bool], timeout: float, what: str, log: Log,
                failed: Callable[[], str | None] = lambda: None) -> float | None:
    """Poll ``done`` until it holds (the seconds it took) or ``timeout`` passes (None); a
    note every 10 s. ``failed`` names a reason to stop at once (raised as the error)."""
    started = time.monotonic()
    next_note = started + 10
    while True:
        reason = failed()
        if reason:
            raise StackError(reason)
        if done():
            return time.monotonic() - started
        if time.monotonic() - started >= timeout:
            return None
        if time.monotonic() >= next_note:
            log(f"{what}: waiting ({time.monotonic() - started:.0f}s)")
            next_note += 10
        time.sleep(0.25)


def _start(settings: NodeSettings, component: Component, cmd: list[str], log: Log) -> ProcessRecord:
    """Start the component as the leader of its own process group; wait until it is healthy."""
    log_path = settings.paths.log(component.name)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_env(),
                                cwd=settings.home, start_new_session=True)
    record = ProcessRecord(name=component.name, pid=proc.pid, create_time=psutil.Process(proc.pid).create_time(),
                           endpoint=component.endpoint, log=str(log_path))

    def exited() -> str | None:
        if proc.poll() is None:
            return None
        return (f"{component.name} exited during startup (code {proc.returncode}): "
                f"{stack.last_error_line(log_path)} [log: {log_path}]")

    took = _wait_until(lambda: component.health(settings), component.startup_timeout, component.name, log, exited)
    if took is None:
        stack.terminate(record)
        raise StackError(f"{component.name} did not become healthy within {component.startup_timeout:.0f}s: "
                         f"{stack.last_error_line(log_path)} [log: {log_path}]")
    log(f"{component.name}: healthy after {took:.1f}s (pid {proc.pid})")
    return record


def _after_start(settings: NodeSettings, name: str, log: Log) -> None:
    """What a fresh component needs before the next one can use it."""
    if name == "containerd" and images.ensure_pause_image(settings):
        log(f"containerd: imported the sandbox image {layout.PAUSE_IMAGE}")
    elif name == "kube-apiserver":
        api.apply(settings, render.COREDNS_RBAC)


def _wait_ready(settings: NodeSettings, log: Log, timeout: float = READY_TIMEOUT) -> float:
    took = _wait_until(lambda: api.node_ready(settings) and api.accepts_pods(settings), timeout,
                       f"node {layout.NODE_NAME}", log)
    if took is None:
        kubelet_log = settings.paths.log("kubelet")
        raise StackError(f"node {layout.NODE_NAME} did not become Ready within {timeout:.0f}s: "
                         f"{stack.last_error_line(kubelet_log)} [log: {kubelet_log}]")
    return took


def _alive(record: ProcessRecord | None) -> bool:
    return record is not None and record.process() is not None


def up(settings: NodeSettings, log: Log = note) -> dict:
    """Start what is not running yet; wait until the node is Ready. Returns ``status`` with
    ``started`` (the components started now) and ``seconds`` (the whole ``up``)."""
    began = time.monotonic()
    host.check_root()
    state = StackState(settings.home)
    stack.private_home(settings.home.parent)
    with state.locked():
        records = state.load()
        todo = [c for c in components(settings) if not _alive(records.get(c.name))]
        if len(str(settings.paths.containerd_socket)) > 100:
            raise StackError(f"DFP_HOME={settings.home.parent} is too deep for containerd's socket path "
                             "(Unix sockets take about 100 characters); use a shorter DFP_HOME")
        mode = host.check_host(settings, [c.name for c in todo])
        made = pki.ensure_pki(settings.paths)
        if made:
            log(f"certificates made: {', '.join(made)}")
        render.write_configs(settings.paths)
        marker = settings.home / HOST_NETWORK_MARKER
        if not marker.exists():  # from the first `up` on: what `down` takes away again
            marker.write_text(json.dumps({"bridge": layout.BRIDGE, "chain": layout.IPTABLES_CHAIN,
                                          "created": host.absent_host_dirs()}))
        host.ensure_bridge()
        host.ensure_iptables()
        log(f"host: cgroup {mode}, bridge {layout.BRIDGE} at {layout.host_address()}, iptables chain "
            f"{layout.IPTABLES_CHAIN}")
        commands = render.commands(settings)
        started = []
        for component in components(settings):
            rec = records.get(component.name)
            if _alive(rec):
                if _wait_until(lambda: component.health(settings), component.startup_timeout, component.name,
                               log) is not None:
                    log(f"{component.name}: already running (pid {rec.pid})")
                    continue
                log(f"{component.name}: pid {rec.pid} is not healthy; restarting it")
                stack.terminate(rec)
            elif rec is not None and rec.group():
                log(f"{component.name}: its leader pid {rec.pid} is gone but some of its processes still run; "
                    "stopping them first")
                stack.terminate(rec)
            records[component.name] = _start(settings, component, commands[component.name], log)
            state.save(records)
            _after_start(settings, component.name, log)
            started.append(component.name)
        ready_after = _wait_ready(settings, log)
        log(f"node {layout.NODE_NAME}: Ready (kubeconfig: {settings.paths.admin_kubeconfig})")
    result = status(settings)
    result.update(started=started, seconds=round(time.monotonic() - began, 1), ready_wait_seconds=round(ready_after, 1))
    return result


# --------------------------------------------------------------------------- down


def _kill_pod_tasks(settings: NodeSettings, log: Log) -> int:
    """Kill and delete every task (pod sandbox and container) of the node's containerd."""
    try:
        listed = images.ctr(settings, "tasks", "list", "--quiet", check=False, timeout=30)
    except subprocess.TimeoutExpired:
        return 0
    ids = [line.strip() for line in listed.stdout.decode().splitlines() if line.strip()]
    for task in ids:
        with contextlib.suppress(subprocess.TimeoutExpired):
            images.ctr(settings, "tasks", "delete", "--force", task, check=False, timeout=30)
    if ids:
        log(f"containerd: killed {len(ids)} pod task(s)")
    return len(ids)


def _leftover_processes(settings: NodeSettings) -> list[psutil.Process]:
    """Our containerd's shims (named by our socket) and processes still in the kubelet's pod
    cgroups."""
    socket = str(settings.paths.containerd_socket)
    left = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            cmdline = proc.info["cmdline"] or []
            if proc.info["name"] and proc.info["name"].startswith("containerd-shim") and socket in cmdline:
                left.append(proc)
                continue
            cgroups = Path(f"/proc/{proc.pid}/cgroup").read_text()
            if "/kubepods" in cgroups:
                left.append(proc)
        except (psutil.Error, OSError):
            continue
    return left


def _kill(processes: list[psutil.Process]) -> None:
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(processes, timeout=10)


def _clean_host(settings: NodeSettings, log: Log) -> None:
    """What the node set up or left outside its processes: only when this DFP_HOME set it up."""
    marker = settings.home / HOST_NETWORK_MARKER
    if not marker.exists():
        return
    left = _leftover_processes(settings)
    if left:
        log(f"killing {len(left)} leftover pod or shim process(es)")
        _kill(left)
    kube_proxy = settings.binary("kube-proxy")
    if layout.executable(kube_proxy):  # removes kube-proxy's iptables (and nftables) rules
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run([str(kube_proxy), "--cleanup"], capture_output=True, timeout=60, env=_env())
    chains = host.delete_chains((layout.IPTABLES_CHAIN, "KUBE-"))
    if chains:
        log(f"iptables: removed {len(chains)} chain(s)")
    unmounted = host.unmount_all(settings.home)
    if unmounted:
        log(f"unmounted {len(unmounted)} mount(s) under {settings.home}")
    if host.delete_bridge():
        log(f"deleted bridge {layout.BRIDGE}")
    shutil.rmtree(settings.paths.cni_ipam, ignore_errors=True)  # every pod is gone: no address is in use
    host.remove_cni_cache(render.cni_conflist(settings.paths)["name"])
    host.remove_pod_cgroups()
    try:
        created = json.loads(marker.read_text()).get("created", [])
    except ValueError:  # a marker from before it was JSON
        created = []
    host.remove_created_dirs(created)
    marker.unlink()


def down(settings: NodeSettings, log: Log = note) -> dict:
    """Stop what ``up`` started (matched by pid and start time), the pods' processes, and take
    away the bridge, the iptables chains and the mounts. Data (etcd, images) is kept."""
    state = StackState(settings.home)
    if not settings.home.is_dir():
        return status(settings)
    host.check_root()
    with state.locked():
        records = state.load()
        order = [c.name for c in components(settings)]
        for name in reversed(order):
            if name == "kube-apiserver" and _alive(records.get("containerd")):
                _kill_pod_tasks(settings, log)  # the kubelet is stopped: nothing restarts them
            rec = records.pop(name, None)
            if rec is None:
                continue
            leader_alive = rec.process() is not None
            stopped = stack.terminate(rec)
            what = "stopped" if leader_alive else "stopped what was left of it" if stopped else "was not running"
            log(f"{name}: {what} (process group {rec.pid})")
            state.save(records)
        _clean_host(settings, log)
    return status(settings)


# --------------------------------------------------------------------------- status


def status(settings: NodeSettings) -> dict:
    records = StackState(settings.home).load() if settings.home.is_dir() else {}
    stopped = {c.name for c in components(settings) if not _alive(records.get(c.name))}
    holders = host.port_holders([p for p in layout.PORTS if p.component in stopped]) if stopped else {}
    entries = {}
    for component in components(settings):
        rec = records.get(component.name)
        alive = _alive(rec)
        entry = {"endpoint": component.endpoint, "pid": rec.pid if alive else None, "running": alive,
                 "healthy": alive and component.health(settings),
                 "log": rec.log if rec else str(settings.paths.log(component.name))}
        if rec is not None and not alive:
            orphans = sorted(p.pid for p in rec.group())
            if orphans:  # `dfp cluster down` or `up` stops them
                entry["orphaned_pids"] = orphans
        taken = [holder for port, holder in holders.items() if port.component == component.name]
        if taken:
            entry["port_taken_by"] = taken[0]
        entries[component.name] = entry
    api_up = entries["kube-apiserver"]["healthy"]
    return {
        "home": str(settings.home),
        "kubernetes_version": layout.kubernetes_version(),
        "node": layout.NODE_NAME,
        "ready": bool(api_up and api.node_ready(settings)),
        "host_address": layout.host_address(),
        "api_server": pki.api_server_url(),
        "kubeconfig": str(settings.paths.admin_kubeconfig),
        "containerd_socket": str(settings.paths.containerd_socket),
        "pod_cidr": layout.POD_CIDR,
        "service_cidr": layout.SERVICE_CIDR,
        "bridge": layout.BRIDGE if host.bridge_exists() else None,
        "components": entries,
    }


@contextlib.contextmanager
def running(settings: NodeSettings, log: Log = note) -> Iterator[dict]:
    """A node for a block (tests, benchmarks): started, then stopped."""
    result = up(settings, log=log)
    try:
        yield result
    finally:
        down(settings, log=lambda m: None)
