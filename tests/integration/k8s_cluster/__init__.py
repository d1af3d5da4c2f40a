"""The tests on the one-node Kubernetes cluster: a package, so that the node lives only while
they run (see conftest.py)."""
