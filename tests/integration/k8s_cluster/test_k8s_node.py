"""The one-node cluster for real: Ready, an image imported from the Docker engine runs
without a pull, pods resolve and reach ``kubernetes.default.svc`` (CoreDNS + kube-proxy) and a
server on the host's bridge address, pods reach nothing else, and ``down`` leaves no process,
mount, bridge or iptables chain of ours."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.k8s_node import PROBE_IMAGE, ensure_probe_image

pytestmark = [pytest.mark.k8s, pytest.mark.slow]


def _core(node):
    from kubernetes import client, config

    return client.CoreV1Api(config.new_client_from_config(str(node.settings.paths.admin_kubeconfig)))


def run_pod(node, name: str, script: str, timeout: float = 120) -> tuple[str, str]:
    """Run ``script`` with busybox's sh in a pod of the probe image (never pulled); its final
    phase and log. The pod is deleted afterwards."""
    core = _core(node)
    pod = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 0, "automountServiceAccountToken": False,
                 "containers": [{"name": "probe", "image": PROBE_IMAGE, "imagePullPolicy": "Never",
                                 "command": ["/bin/busybox", "sh", "-c", script]}]},
    }
    core.create_namespaced_pod("default", pod)
    try:
        deadline = time.monotonic() + timeout
        phase = "Pending"
        while time.monotonic() < deadline:
            phase = core.read_namespaced_pod(name, "default").status.phase
            if phase in ("Succeeded", "Failed"):
                break
            time.sleep(0.5)
        log = core.read_namespaced_pod_log(name, "default") if phase in ("Succeeded", "Failed") else ""
        return phase, log
    finally:
        core.delete_namespaced_pod(name, "default", grace_period_seconds=0)


@contextlib.contextmanager
def tcp_server(address: str):
    """A one-shot TCP server on ``address`` that records what its client sends."""
    received: list[bytes] = []
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((address, 0))
    server.listen(1)
    server.settimeout(90)

    def serve():
        with contextlib.suppress(OSError):
            conn, _ = server.accept()
            with conn:
                conn.settimeout(10)
                received.append(conn.recv(1024))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], received
    finally:
        server.close()
        thread.join(timeout=5)


def test_the_node_is_ready_with_every_component_healthy(k8s_node):
    status = k8s_node.status
    assert status["ready"] is True
    assert {name for name, c in status["components"].items() if not c["healthy"]} == set()
    assert status["host_address"] == "10.244.0.1" and status["bridge"] == "dfp-k8s0"
    nodes = json.loads(k8s_node.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    assert [n["metadata"]["name"] for n in nodes] == ["dfp-node"]
    assert nodes[0]["spec"]["podCIDR"] == "10.244.0.0/24"  # node IPAM
    assert nodes[0]["status"]["nodeInfo"]["kubeletVersion"] == status["kubernetes_version"]


def test_up_again_keeps_what_runs(k8s_node):
    from dfp_core.k8s import node

    again = node.up(k8s_node.settings, log=lambda m: None)
    assert again["started"] == [] and again["ready"] is True
    pids = {name: c["pid"] for name, c in again["components"].items()}
    assert pids == {name: c["pid"] for name, c in k8s_node.status["components"].items()}


def test_status_command_prints_json_last(k8s_node):
    out = subprocess.run([sys.executable, "-m", "dfp_app.cli", "cluster", "status", "--json"],
                         capture_output=True, text=True, env={**os.environ, **k8s_node.env()}, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["ready"] is True and result["host_address"] == "10.244.0.1"


def test_an_imported_image_runs_without_a_pull(k8s_node):
    from dfp_core.k8s import images

    ensure_probe_image()
    first = images.load_images(k8s_node.settings, [PROBE_IMAGE], log=lambda m: None)[PROBE_IMAGE]
    assert first["name"] == "docker.io/dfp-test/busybox:1"
    again = images.load_images(k8s_node.settings, [PROBE_IMAGE], log=lambda m: None)[PROBE_IMAGE]
    assert again["imported"] is False and again["id"] == first["id"]  # same image id: skipped
    phase, log = run_pod(k8s_node, "probe-hello", "echo hello from $(hostname)")
    assert (phase, log.strip()) == ("Succeeded", "hello from probe-hello")


def test_pods_resolve_and_reach_the_api_server_through_its_service(k8s_node):
    from dfp_core.k8s import images

    images.load_images(k8s_node.settings, [ensure_probe_image()], log=lambda m: None)
    # busybox speaks no TLS: plain HTTP to the HTTPS port gets Go's own answer from the API server.
    script = ("nslookup kubernetes.default.svc.cluster.local && "
              "printf 'GET /livez HTTP/1.0\\r\\n\\r\\n' | nc -w 10 kubernetes.default.svc 443")
    phase, log = run_pod(k8s_node, "probe-dns", script)
    assert phase == "Succeeded", log
    assert "Address: 10.96.0.1" in log  # the Service's ClusterIP, from CoreDNS
    assert "Client sent an HTTP request to an HTTPS server" in log  # the API server, through kube-proxy


def test_pods_reach_a_server_on_the_host_bridge_address(k8s_node):
    from dfp_core.k8s import images

    images.load_images(k8s_node.settings, [ensure_probe_image()], log=lambda m: None)
    token = secrets.token_hex(8)
    with tcp_server(k8s_node.status["host_address"]) as (port, received):
        phase, log = run_pod(k8s_node, "probe-host", f"echo {token} | nc -w 10 {k8s_node.status['host_address']} {port}")
    assert phase == "Succeeded", log
    assert received and received[0].strip() == token.encode()


@contextlib.contextmanager
def network_namespace_server():
    """A TCP server in a network namespace of this test, on this machine, that the host
    routes to over a veth pair: somewhere off the pods' bridge that pods must not reach."""
    ns, outside, inside = f"dfpk8s-{secrets.token_hex(3)}", "dfpk8s-t0", "dfpk8s-t1"
    host_ip, ns_ip = "198.18.0.1", "198.18.0.2"  # benchmarking range, here only inside our namespace
    steps = [["ip", "netns", "add", ns], ["ip", "link", "add", outside, "type", "veth", "peer", "name", inside],
             ["ip", "link", "set", inside, "netns", ns], ["ip", "addr", "add", f"{host_ip}/30", "dev", outside],
             ["ip", "link", "set", outside, "up"], ["ip", "-n", ns, "addr", "add", f"{ns_ip}/30", "dev", inside],
             ["ip", "-n", ns, "link", "set", inside, "up"], ["ip", "-n", ns, "link", "set", "lo", "up"]]
    server = None
    try:
        for step in steps:
            subprocess.run(step, check=True, capture_output=True)
        server = subprocess.Popen(["ip", "netns", "exec", ns, "/bin/busybox", "nc", "-ll", "-p", "8080", "-e",
                                   "/bin/busybox", "echo", "reached"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        yield ns_ip, 8080
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "link", "delete", outside], capture_output=True)
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


def _dropped_by_our_chain() -> int:
    """Packets our chain's DROP rule has matched (dockerd's FORWARD policy drops too: count ours)."""
    from dfp_core.k8s import layout

    listing = subprocess.run(["iptables", "-w", "-L", layout.IPTABLES_CHAIN, "-v", "-x", "-n"],
                             capture_output=True, text=True, check=True).stdout
    return sum(int(line.split()[0]) for line in listing.splitlines() if " DROP " in f" {line} ")


def test_pods_reach_nothing_but_this_host(k8s_node):
    from dfp_core.k8s import images

    images.load_images(k8s_node.settings, [ensure_probe_image()], log=lambda m: None)
    with network_namespace_server() as (address, port):
        with socket.create_connection((address, port), timeout=5) as sock:  # the host can
            assert sock.recv(64).strip() == b"reached"
        dropped = _dropped_by_our_chain()
        phase, log = run_pod(k8s_node, "probe-off-host", f"nc -w 5 {address} {port} </dev/null && echo CONNECTED")
    assert phase == "Failed" and "CONNECTED" not in log
    assert _dropped_by_our_chain() > dropped


def test_down_leaves_nothing_of_ours_then_up_again(k8s_node):
    """Last in this module: the node comes up again for whatever test uses it next."""
    import psutil

    from dfp_core.k8s import host, node

    settings = k8s_node.settings
    pids = [c["pid"] for c in node.status(settings)["components"].values() if c["pid"]]
    created = json.loads((settings.home / node.HOST_NETWORK_MARKER).read_text())["created"]
    result = node.down(settings, log=lambda m: None)
    assert [name for name, c in result["components"].items() if c["running"]] == []
    assert result["bridge"] is None and not host.bridge_exists()
    assert host.mounts_under(settings.home) == []
    assert host.our_chains_left() == []
    assert [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE] == []
    home = str(settings.home)
    left = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error, OSError):
            if any(home in arg for arg in proc.info["cmdline"] or []) or "/kubepods" in open(f"/proc/{proc.pid}/cgroup").read():
                left.append(proc.pid)
    assert left == []
    assert [d for d in host.HOST_DIRS if d.exists() and str(d) in created] == []  # what the node made for itself
    assert not host.CNI_CACHE.is_dir() or not list(host.CNI_CACHE.glob("dfp-k8s-*"))
    k8s_node.status = node.up(settings, log=lambda m: None)  # the data was kept: the same cluster again
    assert k8s_node.status["ready"] is True
