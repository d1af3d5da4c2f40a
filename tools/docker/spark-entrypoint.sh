#!/usr/bin/env bash
# Entrypoint of the Spark image. Spark on Kubernetes (the Spark Operator) starts the driver
# pod with `driver <spark-submit arguments>` and each executor pod with `executor`, passing
# the executor's settings in SPARK_* variables; anything else (the pipeline's steps, a shell)
# is run as given.
set -euo pipefail

case "${1:-}" in
  driver)
    shift
    # In the pod, the driver binds to the pod's IP, which the executors reach it by.
    exec "$SPARK_HOME/bin/spark-submit" \
      --conf "spark.driver.bindAddress=${SPARK_DRIVER_BIND_ADDRESS:-0.0.0.0}" \
      --conf "spark.executorEnv.SPARK_DRIVER_POD_IP=${SPARK_DRIVER_BIND_ADDRESS:-}" \
      --deploy-mode client "$@"
    ;;
  executor)
    shift
    # The driver hands its JVM options over as SPARK_JAVA_OPT_0, _1, ... (in that order).
    java_opts=()
    while IFS= read -r option; do
      java_opts+=("$option")
    done < <(env | grep '^SPARK_JAVA_OPT_' | sort -t_ -k4 -n | sed 's/^[^=]*=//')
    exec "$JAVA_HOME/bin/java" "${java_opts[@]}" \
      -Xms"${SPARK_EXECUTOR_MEMORY}" -Xmx"${SPARK_EXECUTOR_MEMORY}" \
      -cp "$SPARK_HOME/jars/*${SPARK_CLASSPATH:+:$SPARK_CLASSPATH}" \
      org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend \
      --driver-url "$SPARK_DRIVER_URL" --executor-id "$SPARK_EXECUTOR_ID" --cores "$SPARK_EXECUTOR_CORES" \
      --app-id "$SPARK_APPLICATION_ID" --hostname "$SPARK_EXECUTOR_POD_IP" \
      --resourceProfileId "${SPARK_RESOURCE_PROFILE_ID:-0}" --podName "${SPARK_EXECUTOR_POD_NAME:-$HOSTNAME}"
    ;;
  "")
    exec "$SPARK_HOME/bin/spark-submit" --version
    ;;
  *)
    exec "$@"
    ;;
esac
