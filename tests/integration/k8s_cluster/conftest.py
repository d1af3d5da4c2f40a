"""The node and the Spark Operator, package-scoped: started by the first test here that asks
for them and taken down after this package's last test, with the images imported into the
node's containerd (about 3.4 GB), so that the tests after these run with that disk free."""

from tests.k8s_node import k8s_node, spark_operator  # noqa: F401
