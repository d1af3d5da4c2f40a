"""The one-node cluster's pure logic: rendered configs and command lines, certificates,
the host checks' one-line errors, and the parsers ``down`` relies on."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import stat
import tarfile
import io
from pathlib import Path

import pytest
from cryptography import x509

from dfp_core.errors import StackError
from dfp_core.k8s import api, host, images, layout, pki, render
from dfp_core.k8s.layout import NodeSettings, Paths


@pytest.fixture
def settings(tmp_path) -> NodeSettings:
    return NodeSettings(home=tmp_path / "k8s", bin_dir=tmp_path / "bin")


def test_containerd_config_runs_beside_dockerd_with_what_this_host_needs(settings):
    text = render.containerd_config(settings.paths)
    home = str(settings.home)
    for key in ("root", "state", "address"):
        line = next(line for line in text.splitlines() if line.strip().startswith(f"{key} ="))
        assert home in line, line  # nothing shared with dockerd's containerd
    assert "restrict_oom_score_adj = true" in text
    assert f'sandbox_image = "{layout.PAUSE_IMAGE}"' in text
    assert "netns_mounts_under_state_dir = true" in text
    assert "SystemdCgroup = false" in text


def test_kubelet_config_matches_this_host_and_the_cluster_dns(settings):
    config = render.kubelet_config(settings.paths)
    assert config["failCgroupV1"] is False and config["cgroupDriver"] == "cgroupfs" and config["failSwapOn"] is False
    assert config["clusterDNS"] == [layout.host_address()]
    assert config["containerRuntimeEndpoint"] == f"unix://{settings.paths.containerd_socket}"
    assert config["authentication"]["anonymous"]["enabled"] is False
    # disk signals off (a shared disk's dip would taint the node for 5 minutes); memory on
    assert {signal: value for signal, value in config["evictionHard"].items() if value != "0%"} == \
        {"memory.available": "100Mi"}
    assert {"nodefs.available", "imagefs.available"} <= set(config["evictionHard"])
    assert Path(config["podLogsDir"]).is_relative_to(settings.home)


def test_cni_gateway_is_the_node_address_and_pods_are_not_masqueraded(settings):
    bridge = render.cni_conflist(settings.paths)["plugins"][0]
    assert bridge["bridge"] == layout.BRIDGE and bridge["isGateway"] and not bridge["ipMasq"]
    (subnet,) = bridge["ipam"]["ranges"][0]
    assert subnet == {"subnet": layout.POD_CIDR, "gateway": layout.host_address()}
    assert Path(bridge["ipam"]["dataDir"]).is_relative_to(settings.home)
    assert ipaddress.ip_address(layout.host_address()) in ipaddress.ip_network(layout.POD_CIDR)
    assert len(layout.BRIDGE) <= 15


def test_every_listener_is_on_loopback_or_the_node_address(settings):
    allowed = {"127.0.0.1", layout.host_address()}
    for port in layout.PORTS:
        assert port.host() in allowed, port
    for name, cmd in render.commands(settings).items():
        for arg in cmd:
            for flag in ("--bind-address=", "--advertise-address=", "--listen-client-urls=", "--listen-peer-urls=",
                         "--listen-metrics-urls="):
                if arg.startswith(flag):
                    assert any(a in arg for a in allowed), (name, arg)
    proxy = render.kube_proxy_config(settings.paths)
    assert proxy["mode"] == "iptables"
    assert proxy["healthzBindAddress"].startswith("127.0.0.1:") and proxy["metricsBindAddress"].startswith("127.0.0.1:")
    assert f"bind {layout.host_address()}" in render.corefile(settings.paths)


def test_command_lines_name_key_files_never_key_material(settings):
    paths = settings.paths
    pki.ensure_pki(paths)
    secrets = [paths.key(name).read_text() for name in ("ca", "sa", "apiserver", "admin")]
    commands = render.commands(settings)
    assert list(commands) == ["containerd", "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
                              "kubelet", "kube-proxy", "coredns"]
    flat = " ".join(" ".join(cmd) for cmd in commands.values())
    assert "BEGIN" not in flat and not any(s.strip() in flat for s in secrets)
    apiserver = commands["kube-apiserver"]
    assert "--enable-aggregator-routing=true" in apiserver and "--authorization-mode=Node,RBAC" in apiserver
    assert f"--etcd-servers=https://127.0.0.1:{layout.ETCD_CLIENT_PORT}" in apiserver  # etcd speaks TLS only
    assert "--client-cert-auth=true" in commands["etcd"]


def test_certificates_are_made_once_name_the_service_and_keep_keys_private(settings):
    paths = settings.paths
    made = pki.ensure_pki(paths)
    assert {"ca", "apiserver", "kubelet", "admin", "sa"} <= set(made)
    assert pki.ensure_pki(paths) == []  # idempotent
    cert = x509.load_pem_x509_certificate(paths.cert("apiserver").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "kubernetes.default.svc" in san.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} >= {layout.kubernetes_service_ip(), layout.host_address()}
    for key in paths.pki.glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    admin = json.loads(paths.admin_kubeconfig.read_text())
    assert admin["clusters"][0]["cluster"]["server"] == pki.api_server_url()
    assert stat.S_IMODE(paths.admin_kubeconfig.stat().st_mode) == 0o600
    # A certificate that no longer names what it must is made again.
    paths.cert("kubelet").write_bytes(paths.cert("etcd-server").read_bytes())
    assert pki.ensure_pki(paths) == ["kubelet"]


def test_cgroup_check_names_the_missing_controllers(tmp_path):
    for controller in ("cpu", "cpuacct", "memory"):
        (tmp_path / controller).mkdir()
    with pytest.raises(StackError) as err:
        host.cgroup_mode(tmp_path)
    message = str(err.value)
    assert "\n" not in message and "cpuset, pids" in message and "no cgroup mounts" in message
    (tmp_path / "cpuset").mkdir(), (tmp_path / "pids").mkdir()
    assert host.cgroup_mode(tmp_path) == "v1"
    unified = tmp_path / "unified"
    unified.mkdir()
    (unified / "cgroup.controllers").write_text("cpu io memory pids\n")
    assert host.cgroup_mode(unified) == "v2"


def test_a_missing_tool_is_one_line_naming_the_deps_script(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with nothing on it
    with pytest.raises(StackError) as err:
        host.check_tools()
    message = str(err.value)
    assert "\n" not in message and message.startswith("containerd is not installed") and host.DEPS_SCRIPT in message


def test_unbuilt_binaries_are_one_line_naming_the_build_script(settings):
    with pytest.raises(StackError) as err:
        host.check_binaries(settings)
    message = str(err.value)
    assert "\n" not in message and str(settings.bin_dir) in message and host.BUILD_SCRIPT in message


def test_a_taken_port_names_its_holder():
    port = next(p for p in layout.PORTS if p.component == "kube-scheduler")
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((port.host(), port.port))
            sock.listen()
            mine = True
        except OSError:  # a node of this machine holds it: the error names that one
            mine = False
        with pytest.raises(StackError) as err:
            host.check_ports(["kube-scheduler"])
    message = str(err.value)
    assert "\n" not in message and f"port {port.port}/tcp" in message and "kube-scheduler cannot start" in message
    if mine and os.geteuid() == 0:  # other users' sockets are not visible to a plain user
        assert f"pid {os.getpid()}" in message


def test_the_root_check_is_one_line():
    if os.geteuid() != 0:
        with pytest.raises(StackError, match="needs root"):
            host.check_root()
        return
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # as nobody
        os.close(read)
        try:
            os.setuid(65534)
            host.check_root()
            os.write(write, b"no error")
        except StackError as exc:
            os.write(write, str(exc).encode())
        finally:
            os._exit(0)
    os.close(write)
    message = os.read(read, 4096).decode()
    os.waitpid(pid, 0)
    assert message.startswith("the Kubernetes node needs root") and "\n" not in message


def test_an_overlapping_route_stops_up():
    host.check_network([{"dst": "default", "dev": "eth0"}, {"dst": "172.17.0.0/16", "dev": "docker0"},
                        {"dst": layout.POD_CIDR, "dev": layout.BRIDGE}])
    with pytest.raises(StackError) as err:
        host.check_network([{"dst": "10.244.0.0/16", "dev": "flannel.1"}])
    assert "overlaps 10.244.0.0/16 routed via flannel.1" in str(err.value)


def test_chains_and_the_jumps_to_them_are_found_in_iptables_save():
    saved = "\n".join([
        "*filter", ":INPUT ACCEPT [0:0]", ":FORWARD DROP [0:0]", ":DOCKER-USER - [0:0]", ":KUBE-FORWARD - [0:0]",
        f":{layout.IPTABLES_CHAIN} - [0:0]",
        '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD',
        f"-A FORWARD -j {layout.IPTABLES_CHAIN}", "-A FORWARD -j DOCKER-USER",
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP", "COMMIT",
    ])
    chains, jumps = host.chains_with_prefix(saved, (layout.IPTABLES_CHAIN, "KUBE-"))
    assert chains == ["KUBE-FORWARD", layout.IPTABLES_CHAIN]
    assert jumps == [["-D", "FORWARD", "-m", "comment", "--comment", "kubernetes forwarding rules", "-j", "KUBE-FORWARD"],
                     ["-D", "FORWARD", "-j", layout.IPTABLES_CHAIN]]


def test_mounts_under_the_home_deepest_first(tmp_path):
    home = tmp_path / "k8s"
    info = "\n".join([
        f"36 25 0:32 / {home}/containerd/state/netns/cni-1 rw - nsfs nsfs rw",
        f"37 25 0:33 / {home}/kubelet/pods/u/volumes/kubernetes.io~projected/kube-api-access rw - tmpfs tmpfs rw",
        f"38 25 0:34 / {tmp_path}/k8s-other rw - tmpfs tmpfs rw",
        "39 25 0:35 / /var/lib/docker/overlay2/x/merged rw - overlay overlay rw",
        f"40 25 0:36 / {home}/with\\040space rw - tmpfs tmpfs rw",
    ])
    points = host.mounts_under(home, info)
    assert points[0].endswith("kube-api-access") and len(points) == 3
    assert f"{home}/with space" in points and f"{tmp_path}/k8s-other" not in points


def test_only_our_pods_cni_results_are_removed(tmp_path):
    for name in ("dfp-k8s-aaa-eth0", "cni-loopback-aaa-lo", "cni-loopback-bbb-lo", "other-net-bbb-eth0"):
        (tmp_path / name).write_text("{}")
    assert host.remove_cni_cache("dfp-k8s", tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cni-loopback-bbb-lo", "other-net-bbb-eth0"]


def test_created_folders_go_with_their_sockets_but_not_with_files(tmp_path):
    made, kept = tmp_path / "kubelet", tmp_path / "cni"
    (made / "device-plugins").mkdir(parents=True)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(made / "device-plugins" / "kubelet.sock"))
    (kept / "results").mkdir(parents=True)
    (kept / "results" / "someone-elses").write_text("{}")
    host.remove_created_dirs([str(made), str(kept)])
    assert not made.exists() and (kept / "results" / "someone-elses").is_file()


def test_docker_names_become_containerds():
    assert images.normalized("dfp/kronodroid-spark:0.1.0") == "docker.io/dfp/kronodroid-spark:0.1.0"
    assert images.normalized("busybox") == "docker.io/library/busybox:latest"
    assert images.normalized("localhost:5000/x/y:1") == "localhost:5000/x/y:1"
    assert images.normalized(layout.PAUSE_IMAGE) == layout.PAUSE_IMAGE


def test_the_pause_image_archive_is_deterministic_and_runs_pause(tmp_path):
    binary = tmp_path / "pause"
    binary.write_bytes(b"\x7fELF not really")
    archive = images.pause_archive(binary)
    assert archive == images.pause_archive(binary)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        (manifest,) = json.load(tar.extractfile("manifest.json"))
        config = json.load(tar.extractfile(manifest["Config"]))
        with tarfile.open(fileobj=tar.extractfile(manifest["Layers"][0])) as layer:
            assert layer.getnames() == ["pause"] and layer.getmember("pause").mode == 0o755
    assert manifest["RepoTags"] == [layout.PAUSE_IMAGE] and config["config"]["Entrypoint"] == ["/pause"]


def test_settings_follow_dfp_home_and_the_cache(tmp_path):
    settings = NodeSettings.from_env({"DFP_HOME": str(tmp_path / "h"), "DFP_CACHE_DIR": str(tmp_path / "c")})
    assert settings.home == tmp_path / "h" / "k8s"
    assert settings.bin_dir == tmp_path / "c" / "kubernetes" / layout.kubernetes_version()
    assert NodeSettings.from_env({"DFP_HOME": str(tmp_path), "DFP_K8S_BIN_DIR": "/opt/k8s"}).bin_dir == Path("/opt/k8s")
    assert isinstance(settings.paths, Paths)


def test_why_pods_are_not_ready_is_said_in_the_apis_own_words():
    node = {"metadata": {"name": "dfp-node"},
            "spec": {"taints": [{"key": "node.kubernetes.io/disk-pressure", "effect": "NoSchedule"}]},
            "status": {"conditions": [{"type": "DiskPressure", "status": "True"},
                                      {"type": "MemoryPressure", "status": "False"},
                                      {"type": "Ready", "status": "True"}]}}
    pending = {"metadata": {"name": "op-controller-1"}, "status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "0/1 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/disk-pressure}"}]}}
    crashing = {"metadata": {"name": "op-webhook-1"}, "status": {
        "phase": "Running", "conditions": [{"type": "Ready", "status": "False"}],
        "containerStatuses": [{"name": "webhook", "restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                               "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": "no certs\n"}}}]}}
    ready = {"metadata": {"name": "fine"}, "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}
    events = [{"type": "Warning", "reason": f"R{i}", "message": f"m{i}", "lastTimestamp": f"2026-12-07T00:0{i}:00Z",
               "involvedObject": {"name": "op-webhook-1"}} for i in (3, 1, 2, 0)] + \
        [{"type": "Normal", "reason": "Pulled", "message": "ok", "lastTimestamp": "2026-12-07T00:09:00Z"}]

    lines = api.waiting_reasons([pending, crashing, ready], events, node)

    assert lines[0] == "node dfp-node: DiskPressure, taint node.kubernetes.io/disk-pressure"
    assert lines[1].startswith("pod op-controller-1: Pending; Unschedulable: 0/1 nodes are available")
    assert lines[2] == ("pod op-webhook-1: Running; webhook CrashLoopBackOff; "
                        "webhook last exited 1 (Error: no certs), 4 restarts")
    assert [line.split(": ", 1)[1] for line in lines[3:]] == ["R1 m1", "R2 m2", "R3 m3"]  # the newest warnings
    done = {"metadata": {"name": "hook-job-1"}, "status": {"phase": "Succeeded", "conditions": [
        {"type": "Ready", "status": "False", "reason": "PodCompleted"}]}}
    assert api.waiting_reasons([ready, done], events, {"metadata": {"name": "n"}, "status": {"conditions": []}}) == []
