"""A Spark standalone cluster on this machine, started from the pyspark distribution: one
master and N workers bound to 127.0.0.1 (the cluster test and `bench/spark_modes.py`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from dfp_core.stack import free_port


def status(port: int) -> dict:
    """The JSON status page of a master or worker web UI."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/", timeout=5) as response:
        return json.load(response)


@contextmanager
def standalone_cluster(base: Path, workers: int = 2, cores: int = 1, memory: str = "2g",
                       timeout: float = 120) -> Iterator[dict]:
    """A running cluster: {"master": "spark://...", "ui": port, "workers": [{"ui", "work", "pid"}]}.
    Logs and work folders go under ``base``; every daemon is stopped on exit."""
    import pyspark

    spark_home = Path(pyspark.__file__).parent
    env = {"SPARK_HOME": str(spark_home), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_DAEMON_MEMORY": "512m",
           "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(base)}
    if os.environ.get("JAVA_HOME"):
        env["JAVA_HOME"] = os.environ["JAVA_HOME"]
    spark_class = str(spark_home / "bin" / "spark-class")
    port, ui = free_port(), free_port()
    master = f"spark://127.0.0.1:{port}"

    def start(args: list[str], log: str) -> subprocess.Popen:
        with open(base / log, "w") as out:
            return subprocess.Popen([spark_class, *args], env=env, cwd=base, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    processes = [start(["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                        "--webui-port", str(ui)], "master.log")]
    try:
        nodes = []
        for i in range(workers):
            worker_ui, work = free_port(), base / f"work{i}"
            processes.append(start(["org.apache.spark.deploy.worker.Worker", master, "--host", "127.0.0.1",
                                    "--cores", str(cores), "--memory", memory, "--webui-port", str(worker_ui),
                                    "--work-dir", str(work)], f"worker{i}.log"))
            nodes.append({"ui": worker_ui, "work": work, "pid": processes[-1].pid})
        deadline = time.monotonic() + timeout
        while True:
            try:
                alive = [w for w in status(ui)["workers"] if w["state"] == "ALIVE"]
            except OSError:
                alive = []
            if len(alive) == workers:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Spark cluster did not come up in {timeout:.0f} s:\n"
                                   + (base / "master.log").read_text()[-3000:])
            time.sleep(1)
        yield {"master": master, "ui": ui, "workers": nodes}
    finally:
        for process in processes:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for process in processes:
            process.wait(timeout=60)
