"""The Kubeflow Spark Operator on the node, as users install it (CRDs, then its Helm chart),
built from the vendored release on top of our Spark image: the controller and the webhook
run in the cluster watching dfp-pipeline. A SparkApplication running through them, with the
webhook putting Secret references on its pods, is test_k8s_pipeline.py's."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.k8s, pytest.mark.slow]


@pytest.fixture(scope="module")
def operator(spark_operator):
    return spark_operator


def _get(node, *args: str) -> dict:
    done = node.kubectl("get", *args, "-o", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_controller_and_webhook_watch_the_pipeline_namespace(k8s_node, operator):
    ns = operator["namespace"]
    for name in ("spark-operator-controller", "spark-operator-webhook"):
        deployment = _get(k8s_node, "-n", ns, "deployment", name)
        assert deployment["status"].get("availableReplicas") == 1, name
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == "docker.io/dfp/spark-operator:2.5.2"
        assert "--namespaces=dfp-pipeline" in container["args"]
    # The webhook made its certificate and put its CA into both configurations.
    for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
        config = _get(k8s_node, kind, "spark-operator-webhook")
        assert all(w["clientConfig"].get("caBundle") for w in config["webhooks"]), kind
    crds = {item["metadata"]["name"] for item in _get(k8s_node, "crd")["items"]}
    assert {"sparkapplications.sparkoperator.k8s.io", "scheduledsparkapplications.sparkoperator.k8s.io"} <= crds
    assert _get(k8s_node, "-n", "dfp-pipeline", "serviceaccount", operator["service_account"])


def test_a_ready_operator_leaves_nothing_to_explain_and_the_node_takes_pods(k8s_node, operator):
    from dfp_core.k8s import api

    # What a timed-out install would add to its error, read from the real API: nothing waits.
    assert api.why_not_ready(k8s_node.settings, operator["namespace"]) == "(every pod is Ready now)"
    node = _get(k8s_node, "node", "dfp-node")
    assert not node["spec"].get("taints"), node["spec"]["taints"]
    conditions = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert conditions["Ready"] == "True" and conditions.get("DiskPressure") == "False", conditions
