"""The node's configuration files and command lines, as pure functions of its settings
(the unit tests read them). Every listener is on loopback or on the node's address (the
bridge gateway), never on every interface."""

from __future__ import annotations

import json

from dfp_core.k8s import layout
from dfp_core.k8s.layout import NodeSettings, Paths
from dfp_core.k8s.pki import FRONT_PROXY_CA

# No eviction for disk ("0%" turns a signal off): this node shares a development disk whose
# free space others move, its images cannot be pulled again, and a disk-pressure taint only
# leaves new pods Pending (a full disk shows itself as write errors instead). Memory stays.
EVICTION_HARD = {"memory.available": "100Mi", "nodefs.available": "0%", "nodefs.inodesFree": "0%",
                 "imagefs.available": "0%"}


def containerd_config(paths: Paths) -> str:
    """Our own containerd (version 2 config, containerd 1.6/1.7): its own root, state and
    socket beside dockerd's; the CRI plugin on, with the settings this machine kind needs."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return "\n".join([
        "version = 2",
        f'root = "{paths.containerd_root}"',
        f'state = "{paths.containerd_state}"',
        # Snapshotters this node does not use only log errors at start.
        'disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", '
        '"io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]',
        "",
        "[grpc]",
        f'  address = "{paths.containerd_socket}"',
        "[ttrpc]",
        f'  address = "{paths.containerd}/containerd.ttrpc.sock"',
        "[debug]",
        '  address = ""',
        "[metrics]",
        '  address = ""',
        "",
        f"[{cri}]",
        # No registry is reachable: the sandbox image is built here and imported at `up`.
        f'  sandbox_image = "{layout.PAUSE_IMAGE}"',
        # Processes here may raise their oom_score_adj but not lower it; without this every
        # sandbox fails ("can't get final child's PID from pipe: EOF").
        "  restrict_oom_score_adj = true",
        # Pod network namespaces under our state folder, so `down` finds what is left mounted.
        "  netns_mounts_under_state_dir = true",
        "  enable_selinux = false",
        f"[{cri}.containerd]",
        '  snapshotter = "overlayfs"',
        '  default_runtime_name = "runc"',
        f"[{cri}.containerd.runtimes.runc]",
        '  runtime_type = "io.containerd.runc.v2"',
        f"[{cri}.containerd.runtimes.runc.options]",
        "  SystemdCgroup = false",
        f"[{cri}.cni]",
        '  bin_dir = "/usr/lib/cni"',
        f'  conf_dir = "{paths.cni_conf_dir}"',
        "  max_conf_num = 1",
        '[plugins."io.containerd.internal.v1.opt"]',
        f'  path = "{paths.containerd}/opt"',
        "",
    ])


def cni_conflist(paths: Paths) -> dict:
    """One bridge with the node's address as gateway, addresses from host-local (kept under
    our folder). No masquerade: pods reach nothing off this machine (the iptables chain of
    ``host`` drops what would be forwarded off the bridge). containerd sets pods' loopback up
    with the ``loopback`` plugin itself."""
    return {
        "cniVersion": "1.0.0",
        "name": "dfp-k8s",
        "plugins": [{
            "type": "bridge", "bridge": layout.BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
            "ipam": {"type": "host-local", "dataDir": str(paths.cni_ipam),
                     "ranges": [[{"subnet": layout.POD_CIDR, "gateway": layout.host_address()}]],
                     "routes": [{"dst": "0.0.0.0/0"}]},
        }],
    }


def kubelet_config(paths: Paths) -> dict:
    pki = paths.pki
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": layout.host_address(),
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": layout.KUBELET_HEALTHZ_PORT,
        "tlsCertFile": str(paths.cert("kubelet")),
        "tlsPrivateKeyFile": str(paths.key("kubelet")),
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(pki / "ca.crt")}},
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{paths.containerd_socket}",
        # containerd 1.x cannot tell the kubelet its cgroup driver; this host mounts cgroup v1,
        # which kubelets from 1.35 on refuse unless told otherwise.
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "failSwapOn": False,
        "clusterDomain": layout.CLUSTER_DOMAIN,
        "clusterDNS": [layout.host_address()],  # CoreDNS runs on the host, on the node's address
        "resolvConf": str(paths.resolv_conf),
        "podCIDR": layout.POD_CIDR,
        "podLogsDir": str(paths.pod_logs),
        "evictionHard": EVICTION_HARD,
        # Images cannot be pulled again here: never collect them.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "registerNode": True,
        "maxPods": 110,
    }


def resolv_conf() -> str:
    """The host's DNS for pods with ``dnsPolicy: Default``: only the cluster's."""
    return f"nameserver {layout.host_address()}\n"


def kube_proxy_config(paths: Paths) -> dict:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(paths.kubeconfig("kube-proxy"))},
        "hostnameOverride": layout.NODE_NAME,
        "bindAddress": layout.host_address(),
        "healthzBindAddress": f"127.0.0.1:{layout.KUBE_PROXY_HEALTHZ_PORT}",
        "metricsBindAddress": f"127.0.0.1:{layout.KUBE_PROXY_METRICS_PORT}",
        "mode": "iptables",
        "clusterCIDR": layout.POD_CIDR,
        # Service traffic leaves with the gateway's address, so replies come back through the
        # host whether or not bridged traffic passes iptables (br_netfilter).
        "iptables": {"masqueradeAll": True, "minSyncPeriod": "1s"},
        # Leave the host's conntrack settings alone.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "nodePortAddresses": [f"{layout.host_address()}/32"],
    }


def corefile(paths: Paths) -> str:
    return f""".:53 {{
    bind {layout.host_address()}
    errors
    health 127.0.0.1:{layout.COREDNS_HEALTH_PORT}
    ready 127.0.0.1:{layout.COREDNS_READY_PORT}
    kubernetes {layout.CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {paths.kubeconfig("coredns")} dfp
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }}
    cache 30
    loop
    reload
}}
"""


COREDNS_RBAC = [
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "system:coredns"},
     "rules": [{"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"], "verbs": ["list", "watch"]},
               {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}]},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "system:coredns"},
     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:coredns"},
     "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:coredns"}]},
]


def commands(settings: NodeSettings) -> dict[str, list[str]]:
    """Each component's command line, in start order. No secret is on any of them: keys are
    files (0600) that the command names."""
    p = settings.paths
    b = settings.binary
    host = layout.host_address()
    ca, ca_key = str(p.cert("ca")), str(p.key("ca"))
    etcd_url = f"https://127.0.0.1:{layout.ETCD_CLIENT_PORT}"
    peer_url = f"http://127.0.0.1:{layout.ETCD_PEER_PORT}"
    kcm, sched = str(p.kubeconfig("controller-manager")), str(p.kubeconfig("scheduler"))
    return {
        "containerd": ["containerd", "--config", str(p.containerd_config)],
        "etcd": [
            str(b("etcd")), "--name=dfp", f"--data-dir={p.etcd_data}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=dfp={peer_url}",
            f"--listen-metrics-urls=http://127.0.0.1:{layout.ETCD_METRICS_PORT}",
            f"--cert-file={p.cert('etcd-server')}", f"--key-file={p.key('etcd-server')}",
            f"--trusted-ca-file={ca}", "--client-cert-auth=true", "--log-level=warn",
        ],
        "kube-apiserver": [
            str(b("kube-apiserver")), f"--advertise-address={host}", f"--bind-address={host}",
            f"--secure-port={layout.API_PORT}",
            f"--etcd-servers={etcd_url}", f"--etcd-cafile={ca}",
            f"--etcd-certfile={p.cert('apiserver-etcd-client')}", f"--etcd-keyfile={p.key('apiserver-etcd-client')}",
            f"--client-ca-file={ca}",
            f"--tls-cert-file={p.cert('apiserver')}", f"--tls-private-key-file={p.key('apiserver')}",
            f"--kubelet-client-certificate={p.cert('apiserver-kubelet-client')}",
            f"--kubelet-client-key={p.key('apiserver-kubelet-client')}",
            f"--kubelet-certificate-authority={ca}", "--kubelet-preferred-address-types=InternalIP",
            f"--service-account-issuer=https://kubernetes.default.svc.{layout.CLUSTER_DOMAIN}",
            f"--service-account-key-file={p.pki / 'sa.pub'}", f"--service-account-signing-key-file={p.key('sa')}",
            f"--service-cluster-ip-range={layout.SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",  # beside the default set
            # Webhooks and aggregated APIs are reached at their endpoints, not through kube-proxy.
            "--enable-aggregator-routing=true",
            f"--requestheader-client-ca-file={p.cert(FRONT_PROXY_CA)}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={p.cert('front-proxy-client')}",
            f"--proxy-client-key-file={p.key('front-proxy-client')}",
            "--profiling=false",
        ],
        "kube-controller-manager": [
            str(b("kube-controller-manager")), f"--kubeconfig={kcm}",
            f"--authentication-kubeconfig={kcm}", f"--authorization-kubeconfig={kcm}",
            "--bind-address=127.0.0.1", f"--secure-port={layout.CONTROLLER_MANAGER_PORT}",
            f"--client-ca-file={ca}", f"--requestheader-client-ca-file={p.cert(FRONT_PROXY_CA)}",
            f"--cluster-signing-cert-file={ca}", f"--cluster-signing-key-file={ca_key}",
            f"--root-ca-file={ca}", f"--service-account-private-key-file={p.key('sa')}",
            "--use-service-account-credentials=true",
            # Node IPAM gives the node the pods' subnet the CNI config uses.
            "--allocate-node-cidrs=true", f"--cluster-cidr={layout.POD_CIDR}", "--node-cidr-mask-size=24",
            f"--service-cluster-ip-range={layout.SERVICE_CIDR}",
            "--leader-elect=false", "--profiling=false",
        ],
        "kube-scheduler": [
            str(b("kube-scheduler")), f"--kubeconfig={sched}",
            f"--authentication-kubeconfig={sched}", f"--authorization-kubeconfig={sched}",
            "--bind-address=127.0.0.1", f"--secure-port={layout.SCHEDULER_PORT}",
            "--leader-elect=false", "--profiling=false",
        ],
        "kubelet": [
            str(b("kubelet")), f"--config={p.kubelet_config}", f"--kubeconfig={p.kubeconfig('kubelet')}",
            f"--root-dir={p.kubelet_root}", f"--node-ip={host}", f"--hostname-override={layout.NODE_NAME}",
        ],
        "kube-proxy": [str(b("kube-proxy")), f"--config={p.kube_proxy_config}"],
        "coredns": [str(b("coredns")), "-conf", str(p.corefile)],
    }


def _write(path, text: str) -> None:
    """Write only a changed file: kube-proxy exits when its config file is written to."""
    if not (path.is_file() and path.read_text() == text):
        path.write_text(text)


def write_configs(paths: Paths) -> None:
    """Every file the components read, brought up to date at each ``up``."""
    for folder in (paths.containerd, paths.cni_conf_dir, paths.cni_ipam, paths.kubelet_root, paths.pod_logs,
                   paths.etcd_data, paths.logs):
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write(paths.containerd_config, containerd_config(paths))
    _write(paths.cni_conf_dir / "10-dfp-k8s.conflist", json.dumps(cni_conflist(paths), indent=1))
    _write(paths.kubelet_config, json.dumps(kubelet_config(paths), indent=1))  # JSON is YAML
    _write(paths.resolv_conf, resolv_conf())
    _write(paths.kube_proxy_config, json.dumps(kube_proxy_config(paths), indent=1))
    _write(paths.corefile, corefile(paths))
