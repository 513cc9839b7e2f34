"""One inference with NVIDIA's tritonclient, the documented way, printed as one JSON document on stdout.

Run by tests/serve/test_serve_clients.py with the python of its own virtualenv (tritonclient's pins clash with the
project's), so it imports only tritonclient, numpy, the standard library and decoded.py beside it. The request
file holds {"inputs": [{"name", "datatype", "data"}], "parameters": {...}, "outputs": [names]}.
Modes: http-json, http-binary, aio-json, aio-binary, grpc. Exit status 2 and {"error": ...} when the call fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from decoded import decoded  # this folder's shared output decoding
from tritonclient.utils import InferenceServerException

MODES = ("http-json", "http-binary", "aio-json", "aio-binary", "grpc")


def _array(tensor: dict[str, Any]) -> np.ndarray:
    """BYTES as an object array of str (the client serialises it), numbers as the tensor's numpy type."""
    if tensor["datatype"] == "BYTES":
        return np.array(tensor["data"], dtype=np.object_)
    return np.array(
        tensor["data"], dtype={"FP64": np.float64, "FP32": np.float32, "INT64": np.int64}[tensor["datatype"]]
    )


def _inputs(module: Any, request: dict[str, Any], binary: bool | None) -> list[Any]:
    """InferInputs; binary None leaves set_data_from_numpy's default (binary_data=True) untouched."""
    inputs = []
    for tensor in request["inputs"]:
        infer_input = module.InferInput(tensor["name"], [len(tensor["data"])], tensor["datatype"])
        if binary is None:
            infer_input.set_data_from_numpy(_array(tensor))
        else:
            infer_input.set_data_from_numpy(_array(tensor), binary_data=binary)
        inputs.append(infer_input)
    return inputs


def _json_outputs(module: Any, request: dict[str, Any]) -> list[Any]:
    return [module.InferRequestedOutput(name, binary_data=False) for name in request["outputs"]]


def _decode(result: Any, described: list[dict[str, Any]]) -> dict[str, Any]:
    """Every output the server answered, through the client's own as_numpy."""
    outputs = {}
    for output in described:
        array = result.as_numpy(output["name"])
        outputs[output["name"]] = decoded(output["datatype"], array)
    return outputs


def _http(url: str, model: str, request: dict[str, Any], binary: bool) -> dict[str, Any]:
    with httpclient.InferenceServerClient(url=url) as client:
        health = {
            "server_live": client.is_server_live(),
            "server_ready": client.is_server_ready(),
            "model_ready": client.is_model_ready(model),
        }
        metadata = client.get_model_metadata(model)
        if binary:  # the client's defaults: binary inputs, no outputs named (all of them, binary)
            result = client.infer(model, _inputs(httpclient, request, None), parameters=request["parameters"])
        else:
            result = client.infer(
                model,
                _inputs(httpclient, request, False),
                outputs=_json_outputs(httpclient, request),
                parameters=request["parameters"],
            )
    response = result.get_response()
    return {"health": health, "metadata": metadata, **_answer(result, response)}


async def _aio(url: str, model: str, request: dict[str, Any], binary: bool) -> dict[str, Any]:
    async with aioclient.InferenceServerClient(url=url) as client:
        health = {
            "server_live": await client.is_server_live(),
            "server_ready": await client.is_server_ready(),
            "model_ready": await client.is_model_ready(model),
        }
        metadata = await client.get_model_metadata(model)
        if binary:
            result = await client.infer(model, _inputs(aioclient, request, None), parameters=request["parameters"])
        else:
            result = await client.infer(
                model,
                _inputs(aioclient, request, False),
                outputs=_json_outputs(aioclient, request),
                parameters=request["parameters"],
            )
    return {"health": health, "metadata": metadata, **_answer(result, result.get_response())}


def _answer(result: Any, response: dict[str, Any]) -> dict[str, Any]:
    """The REST answer; binary_outputs names the outputs the server sent as binary tensor data."""
    binary = [o["name"] for o in response["outputs"] if "binary_data_size" in (o.get("parameters") or {})]
    return {
        "model_name": response.get("model_name"),
        "parameters": response.get("parameters"),
        "binary_outputs": binary,
        "outputs": _decode(result, response["outputs"]),
    }


def _grpc(address: str, model: str, request: dict[str, Any]) -> dict[str, Any]:
    with grpcclient.InferenceServerClient(url=address) as client:
        health = {
            "server_live": client.is_server_live(),
            "server_ready": client.is_server_ready(),
            "model_ready": client.is_model_ready(model),
        }
        metadata = client.get_model_metadata(model, as_json=True)
        result = client.infer(model, _inputs(grpcclient, request, None), parameters=request["parameters"])
        response = result.get_response()
    described = [{"name": o.name, "datatype": o.datatype} for o in response.outputs]
    parameters = {
        key: getattr(value, value.WhichOneof("parameter_choice")) for key, value in response.parameters.items()
    }
    return {
        "health": health,
        "metadata": metadata,
        "model_name": response.model_name,
        "parameters": parameters,
        "binary_outputs": [o.name for o in response.outputs][: len(response.raw_output_contents)],
        "outputs": _decode(result, described),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rest", required=True, help="REST base URL, http://host:port")
    parser.add_argument("--grpc", required=True, help="gRPC address, host:port")
    parser.add_argument("--model", required=True)
    parser.add_argument("--request", required=True, help="JSON file: inputs, parameters, outputs")
    parser.add_argument("--mode", required=True, choices=MODES)
    args = parser.parse_args()
    with open(args.request, encoding="utf-8") as handle:
        request = json.load(handle)
    url = args.rest.removeprefix("http://")  # tritonclient.http takes host:port, no scheme
    try:
        if args.mode.startswith("http-"):
            answer = _http(url, args.model, request, binary=args.mode == "http-binary")
        elif args.mode.startswith("aio-"):
            answer = asyncio.run(_aio(url, args.model, request, binary=args.mode == "aio-binary"))
        else:
            answer = _grpc(args.grpc, args.model, request)
    except InferenceServerException as error:
        print(json.dumps({"error": str(error), "status": error.status(), "debug": error.debug_details()}))
        return 2
    print(json.dumps({"mode": args.mode, **answer}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
