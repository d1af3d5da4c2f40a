"""A one-node Kubernetes cluster on this machine, started and stopped by the project
(``dfp cluster up|status|down``): our own containerd, etcd, the control plane, a kubelet,
kube-proxy and CoreDNS, built from the Go module proxy (tools/kubernetes/) and run as
background processes like the local stack's servers. Everything lives in ``$DFP_HOME/k8s``.

- ``layout``: settings, addresses, ports and the files under ``$DFP_HOME/k8s``;
- ``pki``: the cluster's CA, certificates and kubeconfigs;
- ``render``: the components' configuration files and command lines (pure);
- ``host``: what the host must have, the bridge, iptables and what is left mounted;
- ``images``: the pause image and images imported from the Docker engine;
- ``api``: the few API-server calls the node makes, and kubectl;
- ``node``: up, status, down;
- ``spark_operator``: the Kubeflow Spark Operator, built from its vendored release.
"""
