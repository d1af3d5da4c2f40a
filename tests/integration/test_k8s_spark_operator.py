"""The Kubeflow Spark Operator on the node, as users install it (CRDs, then its Helm chart),
built from the vendored release on top of our Spark image: the controller and the webhook
run in the cluster watching dfp-pipeline, and a one-line PySpark application (its file from
a ConfigMap, which the webhook mounts into the driver and executor pods) reaches COMPLETED."""

from __future__ import annotations

import json
import time

import pytest


pytestmark = [pytest.mark.k8s, pytest.mark.slow]

PI_JOB = """\
from pyspark.sql import SparkSession
spark = SparkSession.builder.appName("dfp-pi").getOrCreate()
n = 200000
inside = spark.sparkContext.parallelize(range(n), 2).filter(lambda i: ((i * 7919) % n / n) ** 2 + ((i * 104729) % n / n) ** 2 <= 1).count()
print("Pi is roughly %f" % (4.0 * inside / n))
spark.stop()
"""


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


def test_a_spark_application_completes(k8s_node, operator):
    ns, name = operator["job_namespace"], "dfp-pi"
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "dfp-pi-job", "namespace": ns},
                  "data": {"pi.py": PI_JOB}}
    mount = [{"name": "job", "mountPath": "/opt/dfp-pi"}]
    app = {
        "apiVersion": "sparkoperator.k8s.io/v1beta2", "kind": "SparkApplication",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "type": "Python", "pythonVersion": "3", "mode": "cluster", "sparkVersion": "4.0.5",
            "image": operator["spark_image"], "imagePullPolicy": "IfNotPresent",
            "mainApplicationFile": "local:///opt/dfp-pi/pi.py",
            "sparkConf": {"spark.ui.enabled": "false", "spark.pyspark.python": "/opt/venv/bin/python",
                          "spark.pyspark.driver.python": "/opt/venv/bin/python"},
            "restartPolicy": {"type": "Never"},
            "volumes": [{"name": "job", "configMap": {"name": "dfp-pi-job"}}],
            "driver": {"cores": 1, "coreRequest": "250m", "memory": "512m",
                       "serviceAccount": operator["service_account"], "volumeMounts": mount},
            "executor": {"instances": 1, "cores": 1, "coreRequest": "250m", "memory": "512m", "volumeMounts": mount},
        },
    }
    k8s_node.kubectl("-n", ns, "delete", "sparkapplication", name, "--ignore-not-found", "--wait=true")
    applied = k8s_node.kubectl("apply", "--server-side", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                                        "items": [config_map, app]}))
    assert applied.returncode == 0, applied.stderr
    deadline, state = time.monotonic() + 600, None
    while time.monotonic() < deadline:
        status = _get(k8s_node, "-n", ns, "sparkapplication", name).get("status", {})
        state = status.get("applicationState", {}).get("state")
        if state in ("COMPLETED", "FAILED", "SUBMISSION_FAILED", "FAILING"):
            break
        time.sleep(2)
    driver = f"{name}-driver"
    log = k8s_node.kubectl("-n", ns, "logs", driver, timeout=60).stdout
    assert state == "COMPLETED", f"{state}: {status.get('applicationState', {}).get('errorMessage', '')}\n{log[-3000:]}"
    assert "Pi is roughly 3." in log
    # The webhook mounted the ConfigMap into the driver (the operator leaves volumes to it).
    pod = _get(k8s_node, "-n", ns, "pod", driver)
    assert any(v.get("configMap", {}).get("name") == "dfp-pi-job" for v in pod["spec"]["volumes"])
    k8s_node.kubectl("-n", ns, "delete", "sparkapplication", name, "--wait=false")
