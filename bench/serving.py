"""Serving benchmark: the registered model over REST (`dfp serve`, its own ASGI server,
one worker, this environment) against scoring in-process (what `dfp score` does per chunk:
the pyfunc loaded with `mlflow.pyfunc.load_model`, schema enforcement included).

  .venv/bin/python bench/serving.py [--rows 4000] [--requests 300] [--batches 20] [--clients 4] [--mlserver]

Private stack, generated rows, transform, a one-epoch training run with the default model,
registered; then, on rows of the table: one-row requests (latency p50/p99, after 20 warm-up
requests), 1,000-row requests (rows/s) as JSON, CSV and Parquet, ``--clients`` clients sending one-row requests at once
(p50/p99, failures), and the first two in-process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import log as _log  # noqa: E402
from _common import registered_model, save, stack_with_spark  # noqa: E402

BATCH = 1000


def log(message: str) -> None:
    _log("serving", message)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _concurrent_one_row(url: str, bodies: list[str], clients: int, requests_each: int) -> dict:
    """``clients`` threads, each with its own connection, sending ``requests_each`` one-row
    requests at once: latency p50/p99 over all of them, and how many failed."""
    import threading

    import requests

    latencies: list[float] = []
    failures = []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def client(k: int) -> None:
        session = requests.Session()
        headers = {"Content-Type": "application/json"}
        start.wait()
        for i in range(requests_each):
            began = time.perf_counter()
            try:
                response = session.post(url, data=bodies[(k * 7919 + i) % len(bodies)], headers=headers, timeout=60)
                ok = response.status_code == 200
            except requests.RequestException:
                ok = False
            elapsed = time.perf_counter() - began
            with lock:
                latencies.append(elapsed) if ok else failures.append(elapsed)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    return {"concurrent_clients": clients, "concurrent_requests": clients * requests_each,
            "concurrent_failed": len(failures), "concurrent_one_row_p50_ms": 1000 * statistics.median(latencies),
            "concurrent_one_row_p99_ms": 1000 * percentile(latencies, 0.99),
            "concurrent_requests_per_s": len(latencies) / wall}


def _mlserver_figures(rt, model_uri: str, frame, tmp: Path, requests_n: int, batches: int) -> dict:
    """The model in MLServer with its MLflow runtime, as KServe's kserve-mlserver runtime runs
    it (``kserve.mlserver_environment``), in a virtualenv of ``kserve.mlserver_requirements``:
    one-row V2 requests (p50/p99 after 20 warm-ups) and ``BATCH``-row ones (rows/s)."""
    import subprocess

    import mlflow
    import requests

    from dfp_core.ml.kserve import mlserver_environment, mlserver_requirements, v2_request
    from dfp_core.ml.serve import wait_until_ready
    from dfp_core.stack import free_port

    with rt.tracking():
        model_dir = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp / "mlserver-model")))
    venv, uv = tmp / "mlserver-venv", str(Path(sys.executable).parent / "uv")
    subprocess.run([uv, "venv", "-q", "-p", sys.executable, str(venv)], check=True)
    subprocess.run([uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
                    *mlserver_requirements((model_dir / "requirements.txt").read_text())], check=True)
    port = free_port()
    env = {"PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "HOME": os.environ.get("HOME", "/root"),
           **mlserver_environment(str(model_dir), "kronodroid", port, free_port(), free_port())}
    server = subprocess.Popen([str(venv / "bin" / "mlserver"), "start", str(model_dir)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v2/models/kronodroid"
    try:
        wait_until_ready(server, url, timeout_s=600, ready_path="/ready")
        session = requests.Session()
        headers = {"Content-Type": "application/json"}
        rows = frame.fillna(0.0)  # V2 JSON carries no NaN
        one = [json.dumps(v2_request(rows.iloc[[i]])) for i in range(min(len(rows), 200))]
        batch = json.dumps(v2_request(rows.iloc[:BATCH]))

        def post(body: str) -> float:
            started = time.perf_counter()
            response = session.post(f"{url}/infer", data=body, headers=headers, timeout=120)
            assert response.status_code == 200, response.text[:500]
            return time.perf_counter() - started

        for i in range(20):
            post(one[i % len(one)])
        latencies = [post(one[i % len(one)]) for i in range(requests_n)]
        post(batch)
        batch_seconds = [post(batch) for _ in range(batches)]
    finally:
        server.terminate()
        server.wait(timeout=60)
    return {"mlserver_one_row_p50_ms": 1000 * statistics.median(latencies),
            "mlserver_one_row_p99_ms": 1000 * percentile(latencies, 0.99),
            "mlserver_batch_rows_per_s": BATCH / statistics.median(batch_seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--clients", type=int, default=4, help="clients sending one-row requests at once")
    parser.add_argument("--mlserver", action="store_true",
                        help="also KServe's MLServer runtime (a virtualenv built with uv): the same figures over V2")
    args = parser.parse_args()

    import warnings

    warnings.filterwarnings("ignore")
    import requests

    from dfp_core.kronodroid.generator import generate
    from dfp_core.ml.pyfunc import as_model_input
    from dfp_core.tracking.registry import load_model
    from dfp_core.ml.serve import scoring_server
    from dfp_core.stack import free_port

    with tempfile.TemporaryDirectory(prefix="dfp-bench-serving-") as tmp:
        tmp = Path(tmp)
        generate(tmp / "input", args.rows, seed=4)
        with stack_with_spark(tmp / "home", "dfp-bench-serving") as rt:
            repo, merge_commit, name = registered_model(rt, tmp / "input", "benchserve")
            uri = f"models:/{name}@candidate"
            frame = as_model_input(rt.retrieve_splits(repo, merge_commit).frames["test"])
            log(f"model {uri}, {len(frame)} test rows")
            while len(frame) < BATCH:
                frame = frame._append(frame, ignore_index=True)
            rows = json.loads(frame.to_json(orient="split", index=False))
            one = [json.dumps({"dataframe_split": {"columns": rows["columns"], "data": [row]}})
                   for row in rows["data"]]
            batch = json.dumps({"dataframe_split": {"columns": rows["columns"], "data": rows["data"][:BATCH]}})
            columnar = {"csv": ("text/csv", frame.iloc[:BATCH].to_csv(index=False).encode()),
                        "parquet": ("application/vnd.apache.parquet", frame.iloc[:BATCH].to_parquet(index=False))}

            figures: dict = {"rows_in_table": args.rows, "batch_rows": BATCH, "requests": args.requests,
                             "batches": args.batches}
            with scoring_server(rt, uri, os.environ, port=free_port()) as server:
                session = requests.Session()

                def post(body: str | bytes, content_type: str = "application/json") -> float:
                    started = time.perf_counter()
                    response = session.post(f"{server.url}/invocations", data=body,
                                            headers={"Content-Type": content_type}, timeout=120)
                    elapsed = time.perf_counter() - started
                    assert response.status_code == 200, response.text[:500]
                    return elapsed

                for i in range(20):
                    post(one[i % len(one)])
                latencies = [post(one[i % len(one)]) for i in range(args.requests)]
                post(batch)
                batch_seconds = [post(batch) for _ in range(args.batches)]
                for kind, (content_type, body) in columnar.items():
                    post(body, content_type)
                    seconds = statistics.median(post(body, content_type) for _ in range(args.batches))
                    figures[f"rest_batch_{kind}_rows_per_s"] = BATCH / seconds
                together = _concurrent_one_row(f"{server.url}/invocations", one, args.clients, args.requests)
            figures.update(together)
            if args.mlserver:
                log("KServe's MLServer runtime (V2 protocol)")
                figures.update(_mlserver_figures(rt, uri, frame, tmp, args.requests, args.batches))
            figures.update({
                "rest_one_row_p50_ms": 1000 * statistics.median(latencies),
                "rest_one_row_p99_ms": 1000 * percentile(latencies, 0.99),
                "rest_batch_rows_per_s": BATCH / statistics.median(batch_seconds),
                "rest_batch_seconds_median": statistics.median(batch_seconds),
            })

            model = load_model(rt, uri)
            sample = frame.iloc[:BATCH]
            for i in range(20):
                model.predict(sample.iloc[[i]])
            local = []
            for i in range(args.requests):
                started = time.perf_counter()
                model.predict(sample.iloc[[i % BATCH]])
                local.append(time.perf_counter() - started)
            model.predict(sample)
            local_batches = []
            for _ in range(args.batches):
                started = time.perf_counter()
                model.predict(sample)
                local_batches.append(time.perf_counter() - started)
            figures.update({
                "in_process_one_row_p50_ms": 1000 * statistics.median(local),
                "in_process_one_row_p99_ms": 1000 * percentile(local, 0.99),
                "in_process_batch_rows_per_s": BATCH / statistics.median(local_batches),
            })
            for kind in ("", "_csv", "_parquet"):
                figures[f"rest{kind}_over_in_process_batch_time"] = (figures["in_process_batch_rows_per_s"]
                                                                     / figures[f"rest_batch{kind}_rows_per_s"])
    save("serving", figures)


if __name__ == "__main__":
    main()
