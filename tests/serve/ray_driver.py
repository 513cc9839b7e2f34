"""The Ray Serve driver of tests/serve/test_ray.py, run inside its loopback-only network namespace on the
two-node cluster of deploy/ray/loopback-cluster.sh:  python ray_driver.py MODELS OUT.json

Deploys sbnn with 2 one-CPU replicas (one per node), then measures what the test asserts: where the replicas
run, whether any readiness probe after deploying answered "not ready", the answers of sequential seeded
predictions, 160 concurrent ones, sbnn's request counters scraped from each replica's own metrics port and
Ray's per node, a model added to the repository while serving (each replica's watcher loads it), and a load
during which one replica's process is killed (each request retried once). Every HTTP call to the deployment
goes through Ray's proxy on 127.0.0.1 and is counted.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

PROXY = "http://127.0.0.1:28000"
GRPC_PROXY = "127.0.0.1:28001"  # Ray's gRPC proxy
NODE_METRICS = ("http://127.0.0.1:26386/metrics", "http://127.0.0.1:26396/metrics")  # loopback-cluster.sh's
MODEL = "flchain-mortality"
ADDED = "flchain-lowrank"  # copied into the repository while serving
METRICS_PORT = 28100  # SBNN_METRICS_PORT: replica k serves its metrics on 28100 + k
ROW = {"age": 62, "sex": "F", "kappa": 1.2, "lambda": 1.5, "flc_grp": 5, "creatinine": 1.0, "mgus": 0}
BODY = {"instances": [ROW, {**ROW, "age": 95}, {**ROW, "kappa": 2.0}], "seed": 5}

sent = 0  # requests sent through the proxy (every one reaches the deployment)
sent_lock = threading.Lock()


def call(path: str, body: dict[str, Any] | None = None, timeout: float = 60.0) -> tuple[int, str]:
    global sent
    with sent_lock:
        sent += 1
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{PROXY}{path}", data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
        return 0, repr(error)


def scrape(url: str) -> str:
    """A node's metrics agent or a replica's metrics port: not through the deployment (not counted)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def replica_metrics() -> dict[int, str]:
    """Each replica's own metrics, by rank, from its port (a replica not up yet is left out)."""
    found = {}
    for rank in range(2):
        try:
            found[rank] = scrape(f"http://127.0.0.1:{METRICS_PORT + rank}/metrics")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
    return found


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample called ``name``: its labels and value (prometheus-client's parser: a label value may hold
    braces, as Ray's route="/v1/models/{name}/predict" does, which a regex over the lines missed)."""
    from prometheus_client.parser import text_string_to_metric_families

    return [(s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]


def replicas() -> list[dict[str, Any]]:
    """The live replicas' node and process, from the GCS actor table (the state API needs the dashboard, which
    loopback-cluster.sh does not start)."""
    from ray._private.state import actors

    table = actors(actor_state_name="ALIVE").values()
    return [
        {"node": a["Address"]["NodeID"], "pid": a["Pid"], "name": a.get("Name") or ""}
        for a in table
        if "ServeReplica" in (a.get("ActorClassName") or "") and a.get("Pid")
    ]


def grpc_checks() -> dict[str, Any]:
    """ServerReady, a ModelInfer of BODY's rows (and the same /v2 REST infer, counted), and a bad seed."""
    import grpc

    from app.serve.grpc import open_inference_grpc_pb2 as pb
    from app.serve.grpc import open_inference_grpc_pb2_grpc as pb_grpc

    rows = BODY["instances"]
    inputs = [
        {"name": k, "shape": [len(rows)], "datatype": "BYTES" if k == "sex" else "FP64", "data": [r[k] for r in rows]}
        for k in rows[0]
    ]
    status, text = call(f"/v2/models/{MODEL}/infer", {"inputs": inputs, "parameters": {"seed": 5}})
    assert status == 200, text
    rest = {o["name"]: o["data"] for o in json.loads(text)["outputs"]}

    def request(seed: int) -> Any:
        message = pb.ModelInferRequest(model_name=MODEL)
        message.parameters["seed"].int64_param = seed
        for tensor in inputs:
            added = message.inputs.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
            if tensor["datatype"] == "BYTES":
                added.contents.bytes_contents.extend(v.encode() for v in tensor["data"])
            else:
                added.contents.fp64_contents.extend(tensor["data"])
        return message

    global sent
    metadata = (("application", "sbnn"),)
    with sent_lock:
        sent += 3  # the three calls below reach the deployment too
    with grpc.insecure_channel(GRPC_PROXY) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        ready = stub.ServerReady(pb.ServerReadyRequest(), metadata=metadata, timeout=30).ready
        answer = stub.ModelInfer(request(5), metadata=metadata, timeout=60)
        try:
            stub.ModelInfer(request(-1), metadata=metadata, timeout=60)
            bad = ("OK", "")
        except grpc.RpcError as error:
            bad = (error.code().name, error.details())
    outputs = {}
    for tensor in answer.outputs:
        values = list(tensor.contents.bytes_contents or tensor.contents.fp64_contents or tensor.contents.bool_contents)
        outputs[tensor.name] = [v.decode() if isinstance(v, bytes) else v for v in values]
    return {"ready": ready, "outputs": outputs, "rest_outputs": rest, "bad_seed": bad}


def main() -> None:
    models, out = sys.argv[1], Path(sys.argv[2])
    import ray
    from ray import serve

    from app.serve.ray_grpc import SERVICER_FUNCTIONS
    from app.serve.ray_serve import SbnnReplica

    result: dict[str, Any] = {}
    started = time.monotonic()
    ray.init(address="127.0.0.1:26379", namespace="sbnn-test", log_to_driver=False)
    result["nodes"] = len([n for n in ray.nodes() if n["Alive"]])
    # One proxy (the head's): both nodes share this machine's loopback, where a second proxy's port would clash.
    for attempt in range(3):  # serve.start waits 60 s for the proxy: on busy cores it may need longer
        try:
            serve.start(
                proxy_location="HeadOnly",
                http_options={"host": "127.0.0.1", "port": 28000},
                grpc_options={"port": 28001, "grpc_servicer_functions": SERVICER_FUNCTIONS},
            )
            break
        except ray.exceptions.GetTimeoutError:
            if attempt == 2:
                raise
    env = {
        "SBNN_MODELS": models,
        "SBNN_DEVICE": "cpu",
        "SBNN_BATCH_MAX_WAIT_MS": "2",
        "SBNN_METRICS_PORT": str(METRICS_PORT),
        "SBNN_WATCH": "true",
        "SBNN_WATCH_DEBOUNCE_S": "0.5",
    }
    options = {"num_cpus": 1, "runtime_env": {"env_vars": env}}
    serve.run(SbnnReplica.options(num_replicas=2, ray_actor_options=options).bind(), name="sbnn", route_prefix="/")
    # serve.run returns once both replicas run, and a replica runs once its models are loaded: every readiness
    # probe from now on answers 200, from whichever replica the proxy picks.
    probes = [call("/v2/health/ready", timeout=5)[0] for _ in range(20)]
    result["ready_probes"], result["ready_s"] = probes, time.monotonic() - started
    result["replicas"] = replicas()

    # Sequential seeded predictions: whichever replica answers, the same numbers.
    rows = 0
    answers = []
    for _ in range(40):
        status, text = call(f"/v1/models/{MODEL}/predict", BODY)
        assert status == 200, text
        answers.append(json.loads(text)["predictions"])
        rows += len(BODY["instances"])
    result["answers"] = answers

    # The Open Inference Protocol over gRPC through Ray's gRPC proxy: the same outputs as /v2 over REST.
    result["grpc"] = grpc_checks()
    rows += 2 * 3  # one REST and one gRPC infer of BODY's three rows

    # 160 concurrent predictions.
    with ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(lambda _: call(f"/v1/models/{MODEL}/predict", {"instances": [ROW]})[0], range(160)))
    rows += 160
    result["concurrent_ok"] = sum(s == 200 for s in statuses)
    result["rows_sent"] = rows

    # sbnn's own counters, from each replica's metrics port (the scrape targets Prometheus is given).
    scraped = replica_metrics()
    result["sbnn_predictions_by_replica"] = {
        str(rank): sum(v for _, v in samples(text, "sbnn_predictions_total")) for rank, text in scraped.items()
    }

    # Ray's own request counter, exported by each node's metrics agent with a replica label: the sum over both
    # nodes' series is every request the deployment received (Ray reports every few seconds: wait for it).
    expected = sent
    counted = 0.0
    for _ in range(60):
        series = [s for url in NODE_METRICS for s in samples(scrape(url), "ray_serve_deployment_request_counter_total")]
        counted = sum(v for labels, v in series if labels.get("deployment") == "sbnn")
        if counted >= expected:
            break
        time.sleep(1)
    result["ray_requests_counted"], result["requests_sent"] = counted, expected
    result["ray_series_replicas"] = sorted({labels["replica"] for labels, _ in series if "replica" in labels})

    # A model added to the shared repository while serving: each replica's watcher loads it (copied under a
    # hidden name, then renamed, so that no watcher sees half a copy).
    import shutil

    shutil.copytree(ROOT / "models" / ADDED, Path(models) / f".{ADDED}")
    os.rename(Path(models) / f".{ADDED}", Path(models) / ADDED)
    added_ready: dict[str, float] = {}
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and len(added_ready) < 2:
        for rank, text in replica_metrics().items():
            if any(v == 1 for labels, v in samples(text, "sbnn_model_ready") if labels.get("model") == ADDED):
                added_ready.setdefault(str(rank), time.monotonic() - deadline + 90)
        time.sleep(0.5)
    result["added_ready_s"] = added_ready
    status, text = call(f"/v1/models/{ADDED}/predict", {"instances": [ROW]})
    result["added_answer"] = status

    # A load of 80 predictions, one retry each; one replica's process is killed once 10 are answered.
    done = threading.Semaphore(0)
    retries = 0
    retries_lock = threading.Lock()

    def one(_: int) -> int:
        nonlocal retries
        status, _text = call(f"/v1/models/{MODEL}/predict", {"instances": [ROW]}, timeout=120)
        if status != 200:
            with retries_lock:
                retries += 1
            status, _text = call(f"/v1/models/{MODEL}/predict", {"instances": [ROW]}, timeout=120)
        done.release()
        return status

    victim = result["replicas"][0]["pid"]
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, i) for i in range(80)]
        for _ in range(10):
            done.acquire()
        os.kill(victim, signal.SIGKILL)
        final = [f.result() for f in futures]
    result["killed_pid"] = victim
    result["load_ok"], result["load_retries"] = sum(s == 200 for s in final), retries
    result["replicas_after"] = replicas()
    result["total_s"] = time.monotonic() - started
    out.write_text(json.dumps(result))
    serve.shutdown()


if __name__ == "__main__":
    main()
