"""The binary tensor data extension on /v2 (app/serve/api/v2_binary.py, app/serve/api/tensors.py): binary inputs
of every datatype the features take, binary outputs (all, or per output), the same numbers as JSON, missing
values, and every malformed binary body a 400 naming the header, tensor or parameter."""

from __future__ import annotations

import gzip
import json
import struct
from typing import Any

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.anyio

MODEL = "flchain-mortality"
INFER = f"/v2/models/{MODEL}/infer"
HEADER = "Inference-Header-Content-Length"
ROWS = [
    {"age": 62, "sex": "F", "kappa": 1.2, "lambda": 1.5, "flc_grp": 5, "creatinine": 1.0, "mgus": 0},
    {"age": 95, "sex": "M", "kappa": 1.2, "lambda": 1.5, "flc_grp": 5, "creatinine": 1.0, "mgus": 0},
    {"age": 10000, "sex": "F", "kappa": 1.2, "lambda": 1.5, "flc_grp": 5, "creatinine": 1.0, "mgus": 0},
]
PARAMETERS = {"samples": 32, "seed": 5, "sampler": "fresh"}
DATATYPES = {"age": "FP64", "sex": "BYTES", "kappa": "FP32", "lambda": "FP64", "flc_grp": "INT32"}
DTYPES = {"FP64": "<f8", "FP32": "<f4", "INT32": "<i4", "INT64": "<i8", "UINT8": "<u1", "FP16": "<f2"}


def _bytes_tensor(values: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)


def _tensor(name: str, values: list[Any], datatype: str) -> bytes:
    if datatype == "BYTES":
        return _bytes_tensor(values)
    return np.asarray([np.nan if v is None else v for v in values], dtype=DTYPES[datatype]).tobytes()


def binary_body(
    rows: list[dict[str, Any]], datatypes: dict[str, str] | None = None, **extra: Any
) -> tuple[bytes, dict[str, str]]:
    """Every input as binary data after the JSON; -> (body, headers)."""
    datatypes = {**DATATYPES, **(datatypes or {})}
    inputs, chunks = [], []
    for name in rows[0]:
        datatype = datatypes.get(name, "FP64")
        chunks.append(_tensor(name, [r[name] for r in rows], datatype))
        parameters = {"binary_data_size": len(chunks[-1])}
        inputs.append({"name": name, "shape": [len(rows)], "datatype": datatype, "parameters": parameters})
    header = json.dumps({"inputs": inputs, "parameters": dict(PARAMETERS), **extra}).encode()
    return header + b"".join(chunks), {HEADER: str(len(header))}


def json_body(rows: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    inputs = [
        {"name": k, "shape": [len(rows)], "datatype": "BYTES" if k == "sex" else "FP64", "data": [r[k] for r in rows]}
        for k in rows[0]
    ]
    return {"inputs": inputs, "parameters": dict(PARAMETERS), **extra}


def decode(response: httpx.Response) -> dict[str, dict[str, Any]]:
    """A /v2 response, JSON or binary, -> {output: {"datatype", "shape", "data" (flat list, NaN as None)}}."""
    length = response.headers.get(HEADER)
    body = response.content
    header = json.loads(body if length is None else body[: int(length)])
    at = len(body) if length is None else int(length)
    outputs = {}
    for output in header["outputs"]:
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is None:
            data = output["data"]
        else:
            raw, at = body[at : at + size], at + size
            if output["datatype"] == "BYTES":
                data, i = [], 0
                while i < len(raw):
                    (n,) = struct.unpack_from("<I", raw, i)
                    data.append(raw[i + 4 : i + 4 + n].decode())
                    i += 4 + n
            elif output["datatype"] == "BOOL":
                data = np.frombuffer(raw, dtype="|b1").tolist()
            else:
                data = [None if np.isnan(v) else v for v in np.frombuffer(raw, dtype="<f8").tolist()]
        outputs[output["name"]] = {"datatype": output["datatype"], "shape": output["shape"], "data": data}
    assert at == len(body), "binary data left over"
    return outputs


@pytest.fixture(scope="module")
async def json_answer(asgi_client: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    response = await asgi_client.post(INFER, json=json_body(ROWS))
    assert response.status_code == 200, response.text
    assert HEADER not in response.headers and response.headers["content-type"] == "application/json"
    return decode(response)


async def test_binary_inputs_and_outputs_answer_as_json(
    asgi_client: httpx.AsyncClient, json_answer: dict[str, dict[str, Any]]
) -> None:
    doubles = dict.fromkeys(["kappa", "flc_grp"], "FP64")
    body, headers = binary_body(ROWS, doubles, parameters={**PARAMETERS, "binary_data_output": True})
    response = await asgi_client.post(INFER, content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    header = json.loads(response.content[: int(response.headers[HEADER])])
    assert all("data" not in o and o["parameters"]["binary_data_size"] > 0 for o in header["outputs"])
    answer = decode(response)
    assert answer == json_answer  # FP64 in, FP64 out: bit for bit
    assert answer["decision"]["data"] == ["accept", "refer", "reject"]
    assert answer["label"]["data"][2] == "" and answer["probabilities"]["data"][4:] == [None, None]
    assert answer["ood_flag"]["data"] == [False, True, True]


async def test_binary_inputs_give_the_json_numbers_exactly(asgi_client: httpx.AsyncClient) -> None:
    """FP64 inputs and FP64 outputs in binary are bit-for-bit the JSON ones."""
    doubles = dict.fromkeys(["kappa", "flc_grp"], "FP64")
    body, headers = binary_body(ROWS, doubles)
    response = await asgi_client.post(INFER, content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"  # no output asked in binary
    plain = await asgi_client.post(INFER, json=json_body(ROWS))
    assert decode(response) == decode(plain)


async def test_outputs_binary_one_by_one(
    asgi_client: httpx.AsyncClient, json_answer: dict[str, dict[str, Any]]
) -> None:
    outputs = [
        {"name": "mutual_information", "parameters": {"binary_data": True}},
        {"name": "decision"},
        {"name": "label", "parameters": {"binary_data": True}},
        {"name": "probabilities", "parameters": {"binary_data": False}},
    ]
    body, headers = binary_body(ROWS, dict.fromkeys(["kappa", "flc_grp"], "FP64"), outputs=outputs)
    response = await asgi_client.post(INFER, content=body, headers=headers)
    assert response.status_code == 200, response.text
    header = json.loads(response.content[: int(response.headers[HEADER])])
    assert [("data" in o) for o in header["outputs"]] == [False, True, False, True]
    answer = decode(response)
    assert list(answer) == ["mutual_information", "decision", "label", "probabilities"]
    for name in answer:
        assert answer[name] == json_answer[name], name


async def test_binary_data_output_with_one_output_kept_as_json(asgi_client: httpx.AsyncClient) -> None:
    body, headers = binary_body(
        ROWS,
        parameters={**PARAMETERS, "binary_data_output": True},
        outputs=[{"name": "decision", "parameters": {"binary_data": False}}, {"name": "ood_flag"}],
    )
    response = await asgi_client.post(INFER, content=body, headers=headers)
    header = json.loads(response.content[: int(response.headers[HEADER])])
    assert header["outputs"][0]["data"] == ["accept", "refer", "reject"]
    assert header["outputs"][1]["parameters"] == {"binary_data_size": 3}
    assert decode(response)["ood_flag"]["data"] == [False, True, True]


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "INT64", "UINT8"])
async def test_every_numeric_datatype_reads_in_binary(asgi_client: httpx.AsyncClient, datatype: str) -> None:
    body, headers = binary_body(ROWS[:1], {"age": datatype, "flc_grp": datatype})
    response = await asgi_client.post(INFER, content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert decode(response)["decision"]["data"] == ["accept"]


async def test_missing_values_in_binary_are_nan_and_empty_bytes(asgi_client: httpx.AsyncClient) -> None:
    """Binary data has no null: NaN is a missing number and an empty BYTES element a missing category, read
    exactly as JSON's null is."""
    rows = [{**ROWS[0], "creatinine": None, "sex": None}]
    plain = await asgi_client.post(INFER, json=json_body(rows))
    binary_rows = [{**ROWS[0], "creatinine": None, "sex": ""}]
    body, headers = binary_body(binary_rows, dict.fromkeys(["kappa", "flc_grp"], "FP64"))
    response = await asgi_client.post(INFER, content=body, headers=headers)
    assert response.status_code == plain.status_code == 200, response.text
    assert decode(response) == decode(plain)


async def test_mixed_json_and_binary_inputs(asgi_client: httpx.AsyncClient) -> None:
    body = json_body(ROWS)
    age = _tensor("age", [r["age"] for r in ROWS], "FP64")
    body["inputs"][0] = {"name": "age", "shape": [3], "datatype": "FP64", "parameters": {"binary_data_size": len(age)}}
    header = json.dumps(body).encode()
    response = await asgi_client.post(INFER, content=header + age, headers={HEADER: str(len(header))})
    assert response.status_code == 200, response.text
    assert decode(response)["decision"]["data"] == ["accept", "refer", "reject"]


async def test_gzip_binary_body(live_server: str) -> None:
    body, headers = binary_body(ROWS)
    async with httpx.AsyncClient(base_url=live_server, timeout=60.0) as http:
        response = await http.post(INFER, content=gzip.compress(body), headers={**headers, "content-encoding": "gzip"})
    assert response.status_code == 200, response.text
    assert decode(response)["decision"]["data"] == ["accept", "refer", "reject"]


def _sized(body: bytes, headers: dict[str, str], **sizes: int) -> tuple[bytes, dict[str, str]]:
    """The body with some inputs' binary_data_size rewritten (the data left as it is)."""
    length = int(headers[HEADER])
    document = json.loads(body[:length])
    for tensor in document["inputs"]:
        if tensor["name"] in sizes:
            tensor["parameters"]["binary_data_size"] = sizes[tensor["name"]]
    header = json.dumps(document).encode()
    return header + body[length:], {HEADER: str(len(header))}


def _edit(change: Any) -> tuple[bytes, dict[str, str]]:
    body, headers = binary_body(ROWS)
    length = int(headers[HEADER])
    document = json.loads(body[:length])
    change(document)
    header = json.dumps(document).encode()
    return header + body[length:], {HEADER: str(len(header))}


def _cases() -> list[tuple[str, tuple[bytes, dict[str, str]], str]]:
    body, headers = binary_body(ROWS)
    length = int(headers[HEADER])
    bad_utf8 = body[:length] + body[length:].replace(b"F", b"\xff", 1)
    return [
        ("header not a number", (body, {HEADER: "many"}), f"{HEADER}: must be an integer"),
        ("header past the body", (body, {HEADER: str(len(body) + 1)}), f"{HEADER}: must be an integer"),
        ("header cutting the JSON", (body, {HEADER: str(length - 1)}), "JSON decode error"),
        ("size without header", (body[:length], {}), f"{HEADER}: header required"),
        ("size past the data", _sized(body, headers, mgus=10_000), "inputs.mgus.parameters.binary_data_size: 10000"),
        ("bytes left over", (body + b"\0" * 8, headers), "body: 8 bytes of binary data beyond"),
        ("size not a whole element", _sized(body, headers, age=23, sex=25), "inputs.age: 23 bytes are not a whole"),
        ("size negative", _sized(body, headers, age=-8), "inputs.age.parameters.binary_data_size: must be an integer"),
        ("size a string", _sized(body, headers, age="24"), "inputs.age.parameters.binary_data_size"),
        ("data and size", _edit(lambda d: d["inputs"][0].update(data=[1, 2, 3])), "inputs.age.data: not allowed"),
        ("BYTES prefix cut", _sized(body, headers, sex=6, kappa=18), "inputs.sex: BYTES data ends inside"),
        ("BYTES element past", _sized(body, headers, sex=4, kappa=20), "inputs.sex: BYTES element of 1 bytes runs"),
        ("BYTES not UTF-8", (bad_utf8, headers), "inputs.sex: BYTES element is not valid UTF-8"),
        ("unknown datatype", _edit(lambda d: d["inputs"][0].update(datatype="FP8")), "inputs.age: unknown datatype"),
        ("elements not matching shape", _edit(lambda d: d["inputs"][0].update(shape=[2])), "inputs.age: shape [2]"),
        (
            "binary_data_output not a bool",
            _edit(lambda d: d["parameters"].update(binary_data_output="yes")),
            "parameters.binary_data_output: must be true or false",
        ),
        (
            "binary_data not a bool",
            _edit(lambda d: d.update(outputs=[{"name": "label", "parameters": {"binary_data": 1}}])),
            "outputs.label.parameters.binary_data: must be true or false",
        ),
        (
            "classification asked",
            _edit(lambda d: d.update(outputs=[{"name": "label", "parameters": {"classification": 2}}])),
            "outputs.label.parameters.classification: the classification extension is not supported",
        ),
    ]


@pytest.mark.parametrize(("body", "message"), [pytest.param(b, m, id=n) for n, b, m in _cases()])
async def test_malformed_binary_body_is_400_naming_the_field(
    asgi_client: httpx.AsyncClient, body: tuple[bytes, dict[str, str]], message: str
) -> None:
    content, headers = body
    response = await asgi_client.post(INFER, content=content, headers=headers)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"], response.json()["error"]


async def test_openapi_declares_json_and_binary_bodies(asgi_client: httpx.AsyncClient) -> None:
    document = (await asgi_client.get("/openapi.json")).json()
    content = document["paths"]["/v2/models/{name}/infer"]["post"]["requestBody"]["content"]
    assert content["application/json"]["schema"]["$ref"] == "#/components/schemas/InferenceRequest"
    assert "application/octet-stream" in content
    schemas = document["components"]["schemas"]
    assert {"InferenceRequest", "RequestInput", "RequestOutput"} <= schemas.keys()
