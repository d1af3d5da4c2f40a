"""Where the node's pieces are: its settings (addresses fixed by design, the binaries'
folder), the ports each component listens on, and every file under ``$DFP_HOME/k8s``."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from dfp_core.errors import StackError
from dfp_core.settings import REPO_ROOT, cache_dir, dfp_home

NODE_NAME = "dfp-node"
BRIDGE = "dfp-k8s0"  # the pods' bridge, created by `up` (Linux names are at most 15 characters)
# The pods' subnet; the bridge holds its first address, which is also the node's address: the
# API server, the kubelet and CoreDNS listen there, and host services that pods use too.
POD_CIDR = "10.244.0.0/24"
SERVICE_CIDR = "10.96.0.0/24"
CLUSTER_DOMAIN = "cluster.local"
IPTABLES_CHAIN = "DFP-K8S-FORWARD"  # ours, in the filter table: pods reach nothing off this machine
PAUSE_IMAGE = "dfp.local/pause:1"  # built here from tools/kubernetes/cmd/pause: no registry is reachable
BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy",
            "kubectl", "etcd", "coredns", "pause")


def host_address() -> str:
    """The bridge gateway: the node's address, reachable from every pod."""
    return str(next(ipaddress.ip_network(POD_CIDR).hosts()))


def kubernetes_service_ip() -> str:
    """The ClusterIP of ``kubernetes.default.svc``: the service range's first address."""
    return str(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))


@dataclass(frozen=True)
class Port:
    component: str
    address: str  # "host": the node's address (the bridge gateway)
    port: int
    proto: str = "tcp"

    def host(self) -> str:
        return host_address() if self.address == "host" else self.address


PORTS = (
    Port("etcd", "127.0.0.1", 2379), Port("etcd", "127.0.0.1", 2380), Port("etcd", "127.0.0.1", 2381),
    Port("kube-apiserver", "host", 6443),
    Port("kube-controller-manager", "127.0.0.1", 10257),
    Port("kube-scheduler", "127.0.0.1", 10259),
    Port("kubelet", "host", 10250), Port("kubelet", "127.0.0.1", 10248),
    Port("kube-proxy", "127.0.0.1", 10249), Port("kube-proxy", "127.0.0.1", 10256),
    Port("coredns", "host", 53), Port("coredns", "host", 53, "udp"),
    Port("coredns", "127.0.0.1", 10054), Port("coredns", "127.0.0.1", 10055),
)
API_PORT = 6443
ETCD_CLIENT_PORT, ETCD_PEER_PORT, ETCD_METRICS_PORT = 2379, 2380, 2381
KUBELET_HEALTHZ_PORT = 10248
KUBE_PROXY_HEALTHZ_PORT, KUBE_PROXY_METRICS_PORT = 10256, 10249
CONTROLLER_MANAGER_PORT, SCHEDULER_PORT = 10257, 10259
COREDNS_HEALTH_PORT, COREDNS_READY_PORT = 10054, 10055


def kubernetes_version(repo_root: Path = REPO_ROOT) -> str:
    gomod = repo_root / "tools" / "kubernetes" / "go.mod"
    match = re.search(r"^\s*k8s\.io/kubernetes (v\S+)", gomod.read_text(), re.M)
    if not match:
        raise StackError(f"cannot read the pinned k8s.io/kubernetes version from {gomod}")
    return match.group(1)


@dataclass(frozen=True)
class NodeSettings:
    """``home`` is ``$DFP_HOME/k8s``; ``bin_dir`` holds the built binaries
    (``$DFP_K8S_BIN_DIR``, else the build cache of the pinned version)."""

    home: Path
    bin_dir: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "NodeSettings":
        home = dfp_home(env) / "k8s"
        override = env.get("DFP_K8S_BIN_DIR")
        bin_dir = Path(override).expanduser() if override else cache_dir(env) / "kubernetes" / kubernetes_version()
        return cls(home=home.absolute(), bin_dir=bin_dir)

    def binary(self, name: str) -> Path:
        return self.bin_dir / name

    @property
    def paths(self) -> "Paths":
        return Paths(self.home)


class Paths:
    """Every file and folder of the node, under one root."""

    def __init__(self, root: Path):
        self.root = root
        self.pki = root / "pki"
        self.kubeconfigs = root / "kubeconfig"
        self.logs = root / "logs"
        self.etcd_data = root / "etcd"
        self.containerd = root / "containerd"
        self.containerd_root = self.containerd / "root"
        self.containerd_state = self.containerd / "state"
        self.containerd_config = self.containerd / "config.toml"
        self.containerd_socket = self.containerd / "containerd.sock"
        self.kubelet_root = root / "kubelet"
        self.kubelet_config = root / "kubelet-config.yaml"
        self.resolv_conf = root / "resolv.conf"
        self.pod_logs = root / "pod-logs"
        self.kube_proxy_config = root / "kube-proxy-config.yaml"
        self.cni_conf_dir = root / "cni" / "net.d"
        self.cni_ipam = root / "cni" / "ipam"
        self.corefile = root / "Corefile"
        self.images_record = root / "images.json"

    def kubeconfig(self, who: str) -> Path:
        return self.kubeconfigs / f"{who}.conf"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.kubeconfig("admin")

    def cert(self, name: str) -> Path:
        return self.pki / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.pki / f"{name}.key"

    def log(self, component: str) -> Path:
        return self.logs / f"{component}.log"


def executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)
