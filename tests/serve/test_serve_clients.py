"""The standard clients (NVIDIA tritonclient, the KServe SDK) against a real uvicorn serving REST and gRPC.

Each client runs as a subprocess with the python of its own virtualenv (their pins clash with the project's and
with each other's): tests/serve/clients/make_venvs.sh DIR builds them, SBNN_CLIENT_VENVS=DIR points here. Without
the variable the module is skipped; with it, a missing venv fails, so CI cannot skip silently. Every mode must
decode the same numbers as /v1 for the same rows and seed: an in-distribution row, a referred one (age 95) and a
rejected one (age 10000: null scores, an empty label).
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 60.0
MODEL = "flchain-mortality"
CLIENTS = Path(__file__).resolve().parent / "clients"
CLIENT_TIMEOUT_S = 60.0
ROW: dict[str, Any] = {"age": 62, "sex": "F", "kappa": 1.2, "lambda": 1.5, "flc_grp": 5, "creatinine": 1.0, "mgus": 0}
ROWS = [ROW, {**ROW, "age": 95, "sex": "M"}, {**ROW, "age": 10000}]
DECISIONS = ["accept", "refer", "reject"]
OPTIONS: dict[str, Any] = {"seed": 20261202, "samples": 128, "sampler": "fresh"}  # "bank" refuses a seed
OUTPUTS = [
    "probabilities",
    "total_entropy",
    "aleatoric",
    "mutual_information",
    "predictive_std",
    "support_score",
    "support_percentile",
    "density_score",
    "density_percentile",
    "epistemic_percentile",
    "ood_flag",
    "decision",
    "reasons",
    "label",
]
MODES = [
    ("triton", "http-json"),
    ("triton", "http-binary"),
    ("triton", "aio-json"),
    ("triton", "aio-binary"),
    ("triton", "grpc"),
    ("kserve", "rest-v2"),
    ("kserve", "rest-v2-binary"),
    ("kserve", "rest-v1"),
    ("kserve", "grpc"),
    ("kserve", "grpc-raw"),
]


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def client_venvs() -> Path:
    """SBNN_CLIENT_VENVS, or a skip that says how to build it."""
    root = os.environ.get("SBNN_CLIENT_VENVS")
    if not root:
        pytest.skip(
            "SBNN_CLIENT_VENVS is unset: run tests/serve/clients/make_venvs.sh DIR, export SBNN_CLIENT_VENVS=DIR"
        )
    return Path(root)


@pytest.fixture(scope="module")
def oip_server(
    model_repository: Path,
    start_uvicorn: Callable[..., Any],
    tmp_path_factory: pytest.TempPathFactory,
    free_port: Callable[[], int],
) -> Iterator[tuple[str, str]]:
    """A real uvicorn (REST) with gRPC on, both on free loopback ports; yields (base URL, gRPC address)."""
    grpc_port = free_port()
    log_dir = tmp_path_factory.mktemp("uvicorn-clients")
    with start_uvicorn(
        model_repository, log_dir, ready=lambda: _listening(grpc_port), host="127.0.0.1", grpc_port=str(grpc_port)
    ) as base_url:
        yield base_url, f"127.0.0.1:{grpc_port}"


@pytest.fixture(scope="module")
def request_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The rows as records (for V1) and as one OIP tensor per feature (FP64, BYTES for sex), plus the options."""
    inputs = [
        {"name": name, "datatype": "BYTES" if name == "sex" else "FP64", "data": [row[name] for row in ROWS]}
        for name in ROW
    ]
    for tensor in inputs:
        if tensor["datatype"] == "FP64":
            tensor["data"] = [float(value) for value in tensor["data"]]
    path = tmp_path_factory.mktemp("client-request") / "request.json"
    path.write_text(json.dumps({"rows": ROWS, "inputs": inputs, "parameters": OPTIONS, "outputs": OUTPUTS}))
    return path


@pytest.fixture(scope="module")
def expected(oip_server: tuple[str, str]) -> list[dict[str, Any]]:
    """The reference: /v1 predict for the same rows, seed, samples and sampler, one normalised record per row."""
    response = httpx.post(f"{oip_server[0]}/v1/models/{MODEL}/predict", json={"instances": ROWS, **OPTIONS}, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["seed"] == OPTIONS["seed"] and body["samples"] == OPTIONS["samples"] and body["sampler"] == "fresh"
    rows = _from_v1(body["predictions"])
    assert [row["decision"] for row in rows] == DECISIONS
    return rows


def _from_v1(predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """/v1 predictions in the shape of the OIP outputs (a rejected row: null scores, an empty label)."""
    rows = []
    for prediction in predictions:
        uncertainty, gate = prediction["uncertainty"] or {}, prediction["gate"]
        probabilities = prediction["probabilities"]
        rows.append(
            {
                "probabilities": None if probabilities is None else list(probabilities.values()),
                "total_entropy": uncertainty.get("total"),
                "aleatoric": uncertainty.get("aleatoric"),
                "mutual_information": uncertainty.get("epistemic"),
                "predictive_std": uncertainty.get("std"),
                "support_score": gate["support"]["score"],
                "support_percentile": gate["support"]["percentile"],
                "density_score": gate["density"]["score"],
                "density_percentile": gate["density"]["percentile"],
                "epistemic_percentile": gate["epistemic"]["percentile"],
                "ood_flag": prediction["decision"] != "accept",
                "decision": prediction["decision"],
                "reasons": ",".join(prediction["reasons"]),
                "label": prediction["label"] or "",
            }
        )
    return rows


def _from_oip(outputs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Decoded OIP outputs (flat lists, NaN as null) -> one record per row; a row of null probabilities is null."""
    assert list(outputs) == OUTPUTS
    assert outputs["probabilities"]["shape"] == [len(ROWS), 2] and outputs["probabilities"]["datatype"] == "FP64"
    assert outputs["ood_flag"]["datatype"] == "BOOL" and outputs["decision"]["datatype"] == "BYTES"
    rows = []
    for index in range(len(ROWS)):
        row = {name: outputs[name]["data"][index] for name in OUTPUTS if name != "probabilities"}
        pair = outputs["probabilities"]["data"][2 * index : 2 * index + 2]
        row["probabilities"] = None if pair == [None, None] else pair
        rows.append(row)
    assert all(outputs[name]["shape"] == [len(ROWS)] for name in OUTPUTS if name != "probabilities")
    return rows


def _same(actual: Any, wanted: Any) -> bool:
    """Numbers to 1e-9 relative, everything else (null, text, flags) exactly."""
    if isinstance(wanted, list):
        return isinstance(actual, list) and len(actual) == len(wanted) and all(map(_same, actual, wanted))
    if isinstance(wanted, float) and not isinstance(actual, bool) and isinstance(actual, int | float):
        return math.isclose(actual, wanted, rel_tol=1e-9, abs_tol=0.0)
    return type(actual) is type(wanted) and actual == wanted


def _run_client(venvs: Path, client: str, mode: str, server: tuple[str, str], request: Path) -> dict[str, Any]:
    python = venvs / client / "bin" / "python"
    if not python.exists():
        pytest.fail(f"SBNN_CLIENT_VENVS={venvs} has no {client} venv ({python}): run tests/serve/clients/make_venvs.sh")
    command = [str(python), str(CLIENTS / f"run_{client}.py"), "--rest", server[0], "--grpc", server[1]]
    command += ["--model", MODEL, "--request", str(request), "--mode", mode]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S, cwd=CLIENTS)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{client} {mode} did not finish within {CLIENT_TIMEOUT_S} s")
    if done.returncode != 0:
        pytest.fail(f"{client} {mode} exited {done.returncode}:\n{done.stdout}\n{done.stderr[-4000:]}")
    return json.loads(done.stdout)


@pytest.mark.parametrize(("client", "mode"), MODES, ids=[f"{client}-{mode}" for client, mode in MODES])
def test_client_decodes_the_v1_numbers(
    client_venvs: Path,
    oip_server: tuple[str, str],
    request_file: Path,
    expected: list[dict[str, Any]],
    client: str,
    mode: str,
) -> None:
    answer = _run_client(client_venvs, client, mode, oip_server, request_file)
    assert answer["health"] == dict.fromkeys(answer["health"], True) and answer["health"]["model_ready"]
    if "metadata" in answer:  # tritonclient's get_model_metadata (REST dict or gRPC JSON)
        inputs = {tensor["name"]: tensor["datatype"] for tensor in answer["metadata"]["inputs"]}
        assert inputs == {name: "BYTES" if name == "sex" else "FP64" for name in ROW}
        assert [tensor["name"] for tensor in answer["metadata"]["outputs"]] == OUTPUTS
    if mode == "rest-v1":
        assert set(answer["v1"]) == {"predictions"}
        rows = _from_v1(answer["v1"]["predictions"])
    else:
        assert answer["model_name"] == MODEL
        parameters = answer["parameters"]
        assert {key: parameters[key] for key in OPTIONS} == OPTIONS, parameters
        rows = _from_oip(answer["outputs"])
    if client == "triton":  # binary asked (binary_data_output, or gRPC raw inputs) -> every output binary
        assert answer["binary_outputs"] == ([] if mode.endswith("-json") else OUTPUTS)
    for index, (got, wanted) in enumerate(zip(rows, expected, strict=True)):
        wrong = {key: (got.get(key), value) for key, value in wanted.items() if not _same(got.get(key), value)}
        assert not wrong, f"row {index} ({DECISIONS[index]}): (client, /v1) differ for {wrong}"
    assert rows[2]["probabilities"] is None and rows[2]["label"] == "" and rows[2]["mutual_information"] is None


DOCS_API = REPO / "docs" / "api.md"
# docs/api.md's client examples: ```triton-python and ```kserve-python run with that client's venv, and
# ```server-python (httpx and numpy only) with this one; each against this module's server.
SNIPPET = re.compile(r"^```(triton|kserve|server)-python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def _snippets() -> list[tuple[str, int, str]]:
    text = DOCS_API.read_text()
    return [(m.group(1), text.count("\n", 0, m.start()) + 1, m.group(2)) for m in SNIPPET.finditer(text)]


def test_docs_have_client_snippets() -> None:
    assert {kind for kind, _, _ in _snippets()} == {"triton", "kserve", "server"}


@pytest.mark.parametrize(("kind", "line", "source"), _snippets(), ids=[f"{k}-line{n}" for k, n, _ in _snippets()])
def test_docs_client_snippet_runs(
    client_venvs: Path, oip_server: tuple[str, str], tmp_path: Path, kind: str, line: int, source: str
) -> None:
    """Each snippet as written, with the documented addresses (127.0.0.1:8000 and :8081) pointed at this server."""
    rest, grpc_address = oip_server[0].removeprefix("http://"), oip_server[1]
    script = tmp_path / "snippet.py"
    script.write_text(source.replace("127.0.0.1:8000", rest).replace("127.0.0.1:8081", grpc_address))
    python = Path(sys.executable) if kind == "server" else client_venvs / kind / "bin" / "python"
    if not python.exists():
        pytest.fail(f"SBNN_CLIENT_VENVS={client_venvs} has no {kind} venv: run tests/serve/clients/make_venvs.sh")
    done = subprocess.run([str(python), str(script)], capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S)
    assert done.returncode == 0, f"docs/api.md line {line}:\n{done.stdout}\n{done.stderr[-3000:]}"
    assert "accept" in done.stdout, done.stdout
