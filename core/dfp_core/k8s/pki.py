"""The cluster's certificates and kubeconfigs, made once under ``$DFP_HOME/k8s`` and made
again only when one is missing, about to expire, or no longer names what it must (its
subject or addresses changed). Keys are EC P-256 (quick to make), written 0600.

One CA signs every component's certificate; a second one (front proxy) signs the client
certificate the API server shows aggregated API servers. The service-account tokens are
signed with a key pair of their own.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dfp_core.k8s import layout
from dfp_core.k8s.layout import Paths

CA_DAYS, LEAF_DAYS, RENEW_DAYS = 3650, 825, 30
CA, FRONT_PROXY_CA = "ca", "front-proxy-ca"


@dataclass(frozen=True)
class CertSpec:
    name: str  # file stem under pki/
    common_name: str
    organization: str | None = None
    server: bool = False
    client: bool = False
    dns: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    ca: str = CA


def cert_specs() -> list[CertSpec]:
    host, node = layout.host_address(), layout.NODE_NAME
    svc = ("kubernetes", "kubernetes.default", "kubernetes.default.svc", f"kubernetes.default.svc.{layout.CLUSTER_DOMAIN}")
    return [
        CertSpec("apiserver", "kube-apiserver", server=True, dns=(*svc, "localhost", node),
                 ips=(layout.kubernetes_service_ip(), host, "127.0.0.1")),
        CertSpec("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters", client=True),
        CertSpec("apiserver-etcd-client", "kube-apiserver-etcd-client", client=True),
        CertSpec("etcd-server", "etcd", server=True, dns=("localhost",), ips=("127.0.0.1",)),
        CertSpec("front-proxy-client", "front-proxy-client", client=True, ca=FRONT_PROXY_CA),
        CertSpec("kubelet", node, server=True, dns=(node,), ips=(host,)),
        *(CertSpec(who, cn, org, client=True) for who, cn, org in CLIENTS),
    ]


# Who gets a kubeconfig: file stem, user (certificate CN), group (O). The node authorizer and
# the default RBAC roles grant the system:* users what each component needs; CoreDNS's role is
# applied by `up`.
CLIENTS = (
    ("admin", "dfp-admin", "system:masters"),
    ("kubelet-client", f"system:node:{layout.NODE_NAME}", "system:nodes"),
    ("controller-manager", "system:kube-controller-manager", None),
    ("scheduler", "system:kube-scheduler", None),
    ("kube-proxy", "system:kube-proxy", None),
    ("coredns", "system:coredns", None),
)


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    tmp.replace(path)


def _new_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP256R1())
    _write(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()), private=True)
    return key


def _load_key(path: Path):
    return serialization.load_pem_private_key(path.read_bytes(), password=None)


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)] if org else []
    return x509.Name(attrs + [x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _fresh(cert: x509.Certificate) -> bool:
    left = cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)
    return left > dt.timedelta(days=RENEW_DAYS)


def _ensure_ca(paths: Paths, name: str, cn: str) -> tuple[x509.Certificate, object, bool]:
    """The CA (made if missing or expiring); True when it was (re)made."""
    cert_path, key_path = paths.cert(name), paths.key(name)
    if cert_path.is_file() and key_path.is_file():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if _fresh(cert):
            return cert, _load_key(key_path), False
    key = _new_key(key_path)
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert, key, True


def _matches(cert: x509.Certificate, spec: CertSpec, ca: x509.Certificate) -> bool:
    if cert.issuer != ca.subject or cert.subject != _name(spec.common_name, spec.organization) or not _fresh(cert):
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = set(san.get_values_for_type(x509.DNSName))
        ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    except x509.ExtensionNotFound:
        names, ips = set(), set()
    return names == set(spec.dns) and ips == set(spec.ips)


def _issue(paths: Paths, spec: CertSpec, ca_cert: x509.Certificate, ca_key) -> None:
    key = _new_key(paths.key(spec.name))
    now = dt.datetime.now(dt.timezone.utc)
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if spec.server else []) + ([ExtendedKeyUsageOID.CLIENT_AUTH] if spec.client else [])
    builder = (x509.CertificateBuilder().subject_name(_name(spec.common_name, spec.organization))
               .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                            content_commitment=False, data_encipherment=False, key_agreement=False,
                                            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False))
    if spec.dns or spec.ips:
        alt = [x509.DNSName(d) for d in spec.dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in spec.ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write(paths.cert(spec.name), cert.public_bytes(serialization.Encoding.PEM))


def ensure_pki(paths: Paths) -> list[str]:
    """Make what is missing or stale; the names of the files (re)made."""
    made = []
    cas = {}
    for name, cn in ((CA, "dfp-kubernetes-ca"), (FRONT_PROXY_CA, "dfp-front-proxy-ca")):
        cert, key, new = _ensure_ca(paths, name, cn)
        cas[name] = (cert, key, new)
        if new:
            made.append(name)
    for spec in cert_specs():
        ca_cert, ca_key, ca_new = cas[spec.ca]
        path = paths.cert(spec.name)
        current = x509.load_pem_x509_certificate(path.read_bytes()) if path.is_file() and paths.key(spec.name).is_file() else None
        if ca_new or current is None or not _matches(current, spec, ca_cert):
            _issue(paths, spec, ca_cert, ca_key)
            made.append(spec.name)
    if not (paths.key("sa").is_file() and paths.pki.joinpath("sa.pub").is_file()):
        key = _new_key(paths.key("sa"))
        _write(paths.pki / "sa.pub", key.public_key().public_bytes(serialization.Encoding.PEM,
                                                                    serialization.PublicFormat.SubjectPublicKeyInfo))
        made.append("sa")
    _write_kubeconfigs(paths)
    return made


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def kubeconfig(server: str, ca_cert: Path, client_cert: Path, client_key: Path, user: str) -> dict:
    return {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "dfp", "cluster": {"server": server, "certificate-authority-data": _b64(ca_cert)}}],
        "users": [{"name": user, "user": {"client-certificate-data": _b64(client_cert),
                                          "client-key-data": _b64(client_key)}}],
        "contexts": [{"name": "dfp", "context": {"cluster": "dfp", "user": user}}],
        "current-context": "dfp",
    }


def api_server_url() -> str:
    return f"https://{layout.host_address()}:{layout.API_PORT}"


def _write_kubeconfigs(paths: Paths) -> None:
    for who, cn, _ in CLIENTS:
        config = kubeconfig(api_server_url(), paths.cert(CA), paths.cert(who), paths.key(who), cn)
        # JSON is YAML; the file holds a private key.
        _write(paths.kubeconfig("kubelet" if who == "kubelet-client" else who), json.dumps(config, indent=1).encode(),
               private=True)
