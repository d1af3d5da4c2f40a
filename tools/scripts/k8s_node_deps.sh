#!/usr/bin/env bash
# Installs what the one-node Kubernetes cluster (`dfp cluster up`) needs from Debian's packages:
# containerd (our own instance runs beside dockerd's), runc, the CNI plugins (/usr/lib/cni),
# iptables and conntrack (kube-proxy), and busybox-static (the node tests' tiny image).
# Idempotent: installs only what is missing. Root + apt.
#   usage: tools/scripts/k8s_node_deps.sh
set -euo pipefail
fail() { printf 'error: %s\n' "$*" >&2; exit 1; }
missing=()
command -v containerd >/dev/null 2>&1 || missing+=(containerd)
command -v runc >/dev/null 2>&1 || missing+=(runc)
[ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] && [ -x /usr/lib/cni/loopback ] || missing+=(containernetworking-plugins)
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
command -v conntrack >/dev/null 2>&1 || missing+=(conntrack)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
file_is_static() { [ -x "$1" ] && ! ldd "$1" >/dev/null 2>&1; }
file_is_static /bin/busybox || missing+=(busybox-static)
if [ ${#missing[@]} -eq 0 ]; then
  echo "k8s node deps: all present (containerd, runc, CNI plugins, iptables, conntrack, busybox-static)" >&2
  exit 0
fi
[ "$(id -u)" = 0 ] || fail "installing ${missing[*]} needs root (run this script as root, or install them with apt)"
command -v apt-get >/dev/null 2>&1 || fail "apt-get not found: install ${missing[*]} with this system's package manager"
echo "k8s node deps: apt-get install ${missing[*]}" >&2
apt-get update -qq || fail "apt-get update failed (output above)"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
  || fail "apt-get install ${missing[*]} failed (output above)"
echo "k8s node deps: installed ${missing[*]}" >&2
