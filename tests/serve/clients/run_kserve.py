"""One inference with the KServe SDK's clients, the documented way, printed as one JSON document on stdout.

Run by tests/serve/test_serve_clients.py with the python of its own virtualenv (kserve needs protobuf<7), so it
imports only kserve, numpy, the standard library and decoded.py beside it. The request file holds
{"rows": [...], "inputs": [{"name", "datatype", "data"}], "parameters": {...}}. Modes: rest-v2 (InferInput data
lists: JSON), rest-v2-binary (set_data_from_numpy: binary tensor data), rest-v1 ({"instances": rows}), grpc
(typed contents) and grpc-raw (raw_input_contents). Exit status 2 and {"error": ...} when the call fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

import grpc
import httpx
import numpy as np
from decoded import decoded  # this folder's shared output decoding

# Importing kserve runs its model server's argparse over sys.argv (and exits on options it finds ambiguous,
# such as --grpc): keep ours aside while it imports.
ARGV, sys.argv = sys.argv[1:], sys.argv[:1]
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig  # noqa: E402

MODES = ("rest-v2", "rest-v2-binary", "rest-v1", "grpc", "grpc-raw")
NUMPY = {"FP64": np.float64, "FP32": np.float32, "INT64": np.int64, "BYTES": np.object_}


def _inputs(request: dict[str, Any], from_numpy: bool) -> list[InferInput]:
    """InferInputs holding lists (the JSON / typed-contents path) or numpy arrays (the binary / raw path)."""
    inputs = []
    for tensor in request["inputs"]:
        shape = [len(tensor["data"])]
        if from_numpy:
            infer_input = InferInput(tensor["name"], shape, tensor["datatype"])
            infer_input.set_data_from_numpy(np.array(tensor["data"], dtype=NUMPY[tensor["datatype"]]))
        else:
            infer_input = InferInput(tensor["name"], shape, tensor["datatype"], data=list(tensor["data"]))
        inputs.append(infer_input)
    return inputs


def _parameter(value: Any) -> Any:
    """A response parameter: plain already (REST) or an InferParameter message (gRPC).

    KServe's InferParameter has no double_param: a double the server sends arrives as an unknown field (None).
    """
    if hasattr(value, "WhichOneof"):
        choice = value.WhichOneof("parameter_choice")
        return None if choice is None else getattr(value, choice)
    return value


def _answer(response: Any) -> dict[str, Any]:
    """An InferResponse decoded through the SDK's own InferOutput.as_numpy."""
    outputs = {}
    for output in response.outputs:
        array = output.as_numpy()
        outputs[output.name] = decoded(output.datatype, array)
    parameters = {key: _parameter(value) for key, value in (response.parameters or {}).items()}
    return {"model_name": response.model_name, "parameters": parameters, "outputs": outputs}


async def _rest(url: str, model: str, request: dict[str, Any], mode: str) -> dict[str, Any]:
    protocol = "v1" if mode == "rest-v1" else "v2"
    client = InferenceRESTClient(RESTConfig(protocol=protocol, timeout=60))
    try:
        health: dict[str, Any] = {"server_live": await client.is_server_live(url)}
        if protocol == "v2":
            health["server_ready"] = await client.is_server_ready(url)
        health["model_ready"] = await client.is_model_ready(url, model)
        if protocol == "v1":
            body = {"instances": request["rows"], **request["parameters"]}
            return {"health": health, "v1": await client.infer(url, body, model_name=model)}
        infer_request = InferRequest(
            model_name=model,
            infer_inputs=_inputs(request, from_numpy=mode == "rest-v2-binary"),
            parameters=dict(request["parameters"]),
        )
        response = await client.infer(url, infer_request, model_name=model)
        return {"health": health, **_answer(response)}
    finally:
        await client.close()


async def _grpc(address: str, model: str, request: dict[str, Any], raw: bool) -> dict[str, Any]:
    client = InferenceGRPCClient(address, timeout=60)
    try:
        health = {
            "server_live": await client.is_server_live(),
            "server_ready": await client.is_server_ready(),
            "model_ready": await client.is_model_ready(model),
        }
        infer_request = InferRequest(
            model_name=model, infer_inputs=_inputs(request, from_numpy=raw), parameters=dict(request["parameters"])
        )
        response = await client.infer(infer_request)
        return {"health": health, **_answer(response)}
    finally:
        await client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rest", required=True, help="REST base URL, http://host:port")
    parser.add_argument("--grpc", required=True, help="gRPC address, host:port")
    parser.add_argument("--model", required=True)
    parser.add_argument("--request", required=True, help="JSON file: rows, inputs, parameters")
    parser.add_argument("--mode", required=True, choices=MODES)
    args = parser.parse_args(ARGV)
    with open(args.request, encoding="utf-8") as handle:
        request = json.load(handle)
    try:
        if args.mode.startswith("rest-"):
            answer = asyncio.run(_rest(args.rest, args.model, request, args.mode))
        else:
            answer = asyncio.run(_grpc(args.grpc, args.model, request, raw=args.mode == "grpc-raw"))
    except httpx.HTTPStatusError as error:
        print(json.dumps({"error": str(error), "status": error.response.status_code, "body": error.response.text}))
        return 2
    except grpc.RpcError as error:
        print(json.dumps({"error": error.details(), "status": str(error.code())}))  # type: ignore[attr-defined]
        return 2
    print(json.dumps({"mode": args.mode, **answer}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
