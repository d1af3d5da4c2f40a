"""Serving benchmark: the registered model over REST (`dfp serve`, its own ASGI server,
one worker, this environment) against scoring in-process (what `dfp score` does per chunk:
the pyfunc loaded with `mlflow.pyfunc.load_model`, schema enforcement included).

  .venv/bin/python bench/serving.py [--rows 4000] [--requests 300] [--batches 20] [--clients 4]
                                    [--stress-rounds 50] [--mlserver]

Private stack, generated rows, transform, a one-epoch training run with the default model,
registered; then, on rows of the table: one-row requests (latency p50/p99, after 20 warm-up
requests), 1,000-row requests (rows/s) as JSON, CSV and Parquet, ``--clients`` clients sending one-row requests at once
(p50/p99, failures), and the first two in-process. ``--mlserver``: the same figures for KServe's
MLServer runtime over the V2 protocol (JSON only), measured by the same helpers.

The stress section (``--stress-rounds`` rounds, 0: none; loopback only): each round sends every
case of ``stress_cases`` (a 30 MB body, malformed JSON, wrong and missing Content-Type, missing,
extra and non-numeric columns, NaN, Infinity) and a normal request; per case the status codes
seen, then whether a normal request and the health path still answer 200, and the server's RSS
(its process tree) before and after. NaN (a missing value, imputed) and an extra column (ignored)
answer 200 by design. Only a 5xx, a dropped connection or a server not answering afterwards is
counted as a failure (``stress.failures``). For MLServer the same loop runs on V2 bodies, its
answers recorded as figures (KServe's runtime is not ours to change).
"""

from __future__ import annotations

import argparse
import contextlib
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
WARM_UP = 20


def log(message: str) -> None:
    _log("serving", message)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _concurrent_one_row(url: str, bodies: list[str], clients: int, requests_each: int,
                        content_type: str = "application/json") -> dict:
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
        headers = {"Content-Type": content_type}
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
            "concurrent_failed": len(failures),
            "concurrent_one_row_p50_ms": 1000 * statistics.median(latencies) if latencies else None,
            "concurrent_one_row_p99_ms": 1000 * percentile(latencies, 0.99) if latencies else None,
            "concurrent_requests_per_s": len(latencies) / wall}


def _poster(url: str, content_type: str = "application/json"):
    """A function posting a body to ``url`` on one kept-alive connection: its seconds, or an
    AssertionError with the answer when that is not a 200."""
    import requests

    session = requests.Session()

    def post(body: str | bytes, media: str = content_type) -> float:
        started = time.perf_counter()
        response = session.post(url, data=body, headers={"Content-Type": media}, timeout=120)
        elapsed = time.perf_counter() - started
        assert response.status_code == 200, response.text[:500]
        return elapsed

    return post


def _endpoint_figures(url: str, one: list[str], batch: str, requests_n: int, batches: int, clients: int) -> dict:
    """What is measured of every server, on its scoring URL and JSON bodies: one-row requests
    (p50/p99 after ``WARM_UP`` warm-ups), ``BATCH``-row requests (rows/s, median of ``batches``),
    then ``clients`` clients sending ``requests_n`` one-row requests each at once."""
    post = _poster(url)
    for i in range(WARM_UP):
        post(one[i % len(one)])
    latencies = [post(one[i % len(one)]) for i in range(requests_n)]
    post(batch)
    batch_seconds = [post(batch) for _ in range(batches)]
    return {"one_row_p50_ms": 1000 * statistics.median(latencies), "one_row_p99_ms": 1000 * percentile(latencies, 0.99),
            "batch_rows_per_s": BATCH / statistics.median(batch_seconds),
            "batch_seconds_median": statistics.median(batch_seconds),
            **_concurrent_one_row(url, one, clients, requests_n)}


# --------------------------------------------------------------------------- stress

# The status `dfp serve` answers each stress case with, by design (test_model_artifact.py::
# test_dfp_serve_answers_every_client_mistake_with_a_short_4xx): NaN is a missing value, imputed,
# and a column the model does not know is ignored.
DFP_SERVE_STATUS = {"30 MB body": 413, "malformed JSON": 400, "wrong Content-Type": 415, "no Content-Type": 415,
                    "missing columns": 400, "extra column": 200, "non-numeric value": 400, "NaN": 200,
                    "Infinity": 400, "normal": 200}


def stress_cases(columns: list[str], rows: list[list], feature: str) -> dict[str, tuple[bytes, str | None]]:
    """The stress cases on a ``dataframe_split`` body of ``rows`` (``feature``: a model input
    column, the first of ``columns`` the bad values go to): name -> (body, Content-Type)."""
    def body(cols, data) -> bytes:
        return json.dumps({"dataframe_split": {"columns": cols, "data": data}}).encode()

    def with_value(value) -> bytes:  # json writes float("nan") and float("inf") as NaN and Infinity
        at = columns.index(feature)
        return body(columns, [[value if j == at else v for j, v in enumerate(row)] if i == 0 else row
                              for i, row in enumerate(rows)])

    keep = [j for j, c in enumerate(columns) if c != feature]
    return {
        "30 MB body": (b" " * (30 << 20), "application/json"),
        "malformed JSON": (b'{"dataframe_split": {', "application/json"),
        "wrong Content-Type": (body(columns, rows), "text/plain"),
        "no Content-Type": (body(columns, rows), None),
        "missing columns": (body([columns[j] for j in keep], [[r[j] for j in keep] for r in rows]), "application/json"),
        "extra column": (body([*columns, "not_a_feature"], [[*r, 1] for r in rows]), "application/json"),
        "non-numeric value": (with_value("twelve"), "application/json"),
        "NaN": (with_value(float("nan")), "application/json"),
        "Infinity": (with_value(float("inf")), "application/json"),
        "normal": (body(columns, rows), "application/json"),
    }


def v2_stress_cases(request: dict, feature: str) -> dict[str, tuple[bytes, str | None]]:
    """The same cases on a V2 request (``kserve.v2_request``: one input per column)."""
    def body(inputs) -> bytes:
        return json.dumps({**request, "inputs": inputs}).encode()

    def with_value(value) -> bytes:
        return body([{**i, "data": [value, *i["data"][1:]]} if i["name"] == feature else i for i in request["inputs"]])

    inputs = request["inputs"]
    extra = {**next(i for i in inputs if i["name"] == feature), "name": "not_a_feature"}
    return {
        "30 MB body": (b" " * (30 << 20), "application/json"),
        "malformed JSON": (b'{"inputs": [', "application/json"),
        "wrong Content-Type": (body(inputs), "text/plain"),
        "no Content-Type": (body(inputs), None),
        "missing columns": (body([i for i in inputs if i["name"] != feature]), "application/json"),
        "extra column": (body([*inputs, extra]), "application/json"),
        "non-numeric value": (with_value("twelve"), "application/json"),
        "NaN": (with_value(float("nan")), "application/json"),
        "Infinity": (with_value(float("inf")), "application/json"),
        "normal": (body(inputs), "application/json"),
    }


def tally(seen: list[int | str]) -> dict[str, int]:
    """Status codes (or a connection error's name) -> how many times each was seen."""
    counts: dict[str, int] = {}
    for outcome in seen:
        counts[str(outcome)] = counts.get(str(outcome), 0) + 1
    return dict(sorted(counts.items()))


def stress_failures(cases: dict[str, dict], after: dict[str, int | str]) -> int:
    """What counts against a server under stress: answers of 500 or above and dropped
    connections (anything not a status code), in every case, and each check afterwards (a normal
    request, the health path) that was not a 200. A 4xx, or a 200 by design, is not a failure."""
    failed = sum(n for case in cases.values() for outcome, n in case["seen"].items()
                 if not outcome.isdigit() or int(outcome) >= 500)
    return failed + sum(1 for outcome in after.values() if outcome != 200)


def _tree_rss_mb(pid: int) -> float | None:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def _stress(url: str, health_url: str, pid: int, cases: dict[str, tuple[bytes, str | None]], rounds: int,
            expected: dict[str, int] | None = None) -> dict:
    """``rounds`` rounds of every case (each a fresh connection, as a careless client sends it),
    then a normal request and the health path; per case the outcomes seen (status codes, or the
    name of a connection error), the first answer's message, and whether every answer was the
    ``expected`` one; the server tree's RSS before and after."""
    import requests

    def send(body: bytes, content_type: str | None) -> tuple[int | str, str]:
        try:
            response = requests.post(url, data=body, timeout=120,
                                     headers={"Content-Type": content_type} if content_type else {})
        except requests.RequestException as exc:
            return type(exc).__name__, str(exc)[:200]
        return response.status_code, response.text[:200]

    rss_before = _tree_rss_mb(pid)
    seen: dict[str, list[int | str]] = {name: [] for name in cases}
    first: dict[str, str] = {}
    started = time.monotonic()
    for _ in range(rounds):
        for name, (body, content_type) in cases.items():
            outcome, text = send(body, content_type)
            seen[name].append(outcome)
            first.setdefault(name, text)
    seconds = time.monotonic() - started
    after: dict[str, int | str] = {"normal": send(*cases["normal"])[0]}
    try:
        after["health"] = requests.get(health_url, timeout=30).status_code
    except requests.RequestException as exc:
        after["health"] = type(exc).__name__
    summary = {}
    for name, outcomes in seen.items():
        summary[name] = {"seen": tally(outcomes), "first_answer": first.get(name, "")}
        if expected and name in expected:
            summary[name]["expected"] = expected[name]
            summary[name]["as_designed"] = all(o == expected[name] for o in outcomes)
    return {"rounds": rounds, "seconds": seconds, "cases": summary, "after": after,
            "failures": stress_failures(summary, after), "rss_mb_before": rss_before, "rss_mb_after": _tree_rss_mb(pid)}


# --------------------------------------------------------------------------- KServe's runtime


@contextlib.contextmanager
def _mlserver(rt, model_uri: str, tmp: Path):
    """The model in MLServer with its MLflow runtime, as KServe's kserve-mlserver runtime runs
    it (``kserve.mlserver_environment``), in a virtualenv of ``kserve.mlserver_requirements``:
    (its V2 model URL, its process), stopped on exit."""
    import subprocess

    import mlflow

    from dfp_core.ml.kserve import mlserver_environment, mlserver_requirements
    from dfp_core.ml.serve import _stop, wait_until_ready
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
    # Its own process group: MLServer forks its inference workers, and _stop ends the group.
    server = subprocess.Popen([str(venv / "bin" / "mlserver"), "start", str(model_dir)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/v2/models/kronodroid"
        wait_until_ready(server, url, timeout_s=600, ready_path="/ready")
        yield url, server
    finally:
        _stop(server)


def _mlserver_figures(rt, model_uri: str, frame, tmp: Path, args) -> dict:
    """KServe's runtime measured as `dfp serve` is (``_endpoint_figures`` on V2 JSON bodies),
    prefixed ``mlserver_``; its stress loop under ``mlserver_stress``."""
    from dfp_core.ml.kserve import v2_request
    from dfp_core.serving.scorer import ID_COLUMN

    rows = frame.fillna(0.0)  # V2 JSON carries no NaN
    one = [json.dumps(v2_request(rows.iloc[[i]])) for i in range(min(len(rows), 200))]
    batch = json.dumps(v2_request(rows.iloc[:BATCH]))
    with _mlserver(rt, model_uri, tmp) as (url, server):
        measured = _endpoint_figures(f"{url}/infer", one, batch, args.requests, args.batches, args.clients)
        figures = {f"mlserver_{key}": value for key, value in measured.items()}
        if args.stress_rounds:
            log(f"MLServer: stress, {args.stress_rounds} rounds")
            request = v2_request(rows.iloc[:5])
            feature = next(c for c in rows.columns if c != ID_COLUMN)
            figures["mlserver_stress"] = _stress(f"{url}/infer", f"{url}/ready", server.pid,
                                                 v2_stress_cases(request, feature), args.stress_rounds)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--clients", type=int, default=4, help="clients sending one-row requests at once")
    parser.add_argument("--stress-rounds", type=int, default=50,
                        help="rounds of bad requests against each server (0: no stress section)")
    parser.add_argument("--mlserver", action="store_true",
                        help="also KServe's MLServer runtime (a virtualenv built with uv): the same figures over V2")
    args = parser.parse_args()

    import warnings

    warnings.filterwarnings("ignore")

    from dfp_core.kronodroid.generator import generate
    from dfp_core.ml.pyfunc import as_model_input
    from dfp_core.tracking.registry import load_model
    from dfp_core.ml.serve import scoring_server
    from dfp_core.serving.scorer import ID_COLUMN
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
                url = f"{server.url}/invocations"
                measured = _endpoint_figures(url, one, batch, args.requests, args.batches, args.clients)
                figures.update({key if key.startswith("concurrent_") else f"rest_{key}": value
                                for key, value in measured.items()})
                post = _poster(url)
                for kind, (content_type, body) in columnar.items():
                    post(body, content_type)
                    seconds = statistics.median(post(body, content_type) for _ in range(args.batches))
                    figures[f"rest_batch_{kind}_rows_per_s"] = BATCH / seconds
                if args.stress_rounds:
                    log(f"dfp serve: stress, {args.stress_rounds} rounds")
                    feature = next(c for c in rows["columns"] if c != ID_COLUMN)
                    figures["stress"] = _stress(url, f"{server.url}/ping", server.process.pid,
                                                stress_cases(rows["columns"], rows["data"][:5], feature),
                                                args.stress_rounds, DFP_SERVE_STATUS)
            if args.mlserver:
                log("KServe's MLServer runtime (V2 protocol)")
                figures.update(_mlserver_figures(rt, uri, frame, tmp, args))

            model = load_model(rt, uri)
            sample = frame.iloc[:BATCH]
            for i in range(WARM_UP):
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
            if args.mlserver:
                figures["mlserver_over_in_process_batch_time"] = (figures["in_process_batch_rows_per_s"]
                                                                  / figures["mlserver_batch_rows_per_s"])
    save("serving", figures)


if __name__ == "__main__":
    main()
