"""The cases of bench/fuzz.py: hypothesis strategies for every POST surface and the metadata routes of a running
server (``discover`` reads its models), and a fixed corpus of known-dangerous bodies sent first.

Mutated documents, binary tensor bodies and metadata requests are built from the model's own features; raw
bodies are bytes that are no well-formed request (see bench/fuzz.py's docstring for the kinds).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
from hypothesis import strategies as st

HEADER = "Inference-Header-Content-Length"
NUMERIC_DATATYPES = ["FP64", "FP32", "FP16", "INT64", "INT32", "INT16", "INT8", "UINT64", "UINT32", "UINT8"]
DATATYPES = [*NUMERIC_DATATYPES, "BOOL", "BYTES", "fp64", "STRING", ""]
DTYPES = {"FP64": "<f8", "FP32": "<f4", "FP16": "<f2", "INT64": "<i8", "INT32": "<i4", "INT16": "<i2"}
DTYPES |= {"INT8": "<i1", "UINT64": "<u8", "UINT32": "<u4", "UINT8": "<u1", "BOOL": "|b1"}
SURROGATES = ["\ud800", "\udbff", "\udc00", "\udfff", "\ud83d"]  # lone: high, low, and half of an emoji's pair
STRINGS = ["", " ", "\x00", "NaN", "Infinity", "-0", "1e999", "null", "true", "F ", "f", "m", "F\x00", "\ufeffF"]
STRINGS += ["../../etc/passwd", "%s%n%x", "{0}{name}", "<script>", "\u202eM", "💉", "\u0130", "a\r\nX-Injected: 1"]
NUMBERS: list[Any] = [0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**400, -(10**400)]
NUMBERS += [0.5, -0.0, 1e308, -1e308, 5e-324, 1e-300, float("nan"), float("inf"), float("-inf")]
SEGMENTS = ["%FF", "%C0%80", "%ED%A0%80", "%F4%90%80%80", "%00", "..", ".", "%2E%2E", "%2F", "a%2Fb", "%25", "%"]
SEGMENTS += ["%G0", "~", "a;b", "x:predict", "%20", "%0D%0A", "models", "%EF%BB%BF"]
CONTENT_TYPES = [None, "application/json", "text/plain", "application/x-www-form-urlencoded", "application/xml"]
CONTENT_TYPES += ["multipart/form-data; boundary=x", "application/json; charset=latin-1", "application/vnd.x+json"]
CONTENT_TYPES += ["application/octet-stream", "application/json; charset=utf-16", ";;;", "application/"]
SENTINEL = "<digits here>"
ENCODINGS = ["gzip", "x-gzip", "deflate", "br", "compress", "gzip, gzip", "identity", "GZIP", "zstd", ""]


@dataclass(frozen=True)
class Target:
    """What the cases are built from: each ready model's features (GET /v1/models/{name}) and v2 outputs, and
    the server's limits (rows, samples, body bytes)."""

    models: dict[str, list[dict[str, Any]]]
    outputs: list[str]
    versions: dict[str, str]
    max_rows: int
    max_samples: int
    max_body_bytes: int


@dataclass(frozen=True)
class Case:
    surface: str  # route and kind, e.g. "v2 infer / binary"
    method: str
    path: str  # already percent-encoded
    headers: dict[str, str]
    body: bytes | None

    def reproducer(self) -> dict[str, Any]:
        """Everything needed to send the case again (the body whole in base64, and a readable prefix)."""
        body = self.body or b""
        return {
            "method": self.method,
            "path": self.path,
            "headers": self.headers,
            "body_bytes": len(body),
            "body_prefix": repr(body[:400]),
            "body_base64": base64.b64encode(body).decode() if len(body) <= 65536 else None,
        }


def discover(base: str, max_rows: int, max_body_bytes: int) -> Target:
    """The server's ready models, their features and versions, and the v2 output names."""
    with httpx.Client(base_url=base, timeout=30.0) as client:
        ready = [m["name"] for m in client.get("/v1/models").json()["models"] if m["state"] == "ready"]
        if not ready:
            raise RuntimeError(f"no ready model at {base}")
        metadata = {name: client.get(f"/v1/models/{quote(name, safe='')}").json() for name in ready}
        outputs = [o["name"] for o in client.get(f"/v2/models/{quote(ready[0], safe='')}").json()["outputs"]]
    return Target(
        models={name: m["features"] for name, m in metadata.items()},
        outputs=outputs,
        versions={name: m["version"] for name, m in metadata.items()},
        max_rows=max_rows,
        max_samples=min(m["max_samples"] for m in metadata.values()),
        max_body_bytes=max_body_bytes,
    )


# Strategies of odd leaves. Long strings are built by `map`: hypothesis' own text would overrun its buffer.
def _long_strings(target: Target) -> st.SearchStrategy[str]:
    sizes = st.sampled_from([1_000, 10_000, 100_000, target.max_body_bytes + 1])
    return st.tuples(sizes, st.sampled_from(["x", "é", "\ud800", "\x00"])).map(lambda t: t[1] * t[0])


def _weird_strings(target: Target) -> st.SearchStrategy[str]:
    lone = st.tuples(st.text(max_size=4), st.sampled_from(SURROGATES), st.text(max_size=4)).map("".join)
    return st.one_of(
        st.text(max_size=12),
        st.sampled_from(STRINGS),
        lone,
        st.integers(0xD800, 0xDFFF).map(chr),
        _long_strings(target),
    )


def _weird_leaves(target: Target) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.sampled_from(NUMBERS),
        _weird_strings(target),
    )


def _weird_values(target: Target) -> st.SearchStrategy[Any]:
    keys = _weird_strings(target)
    return st.recursive(
        _weird_leaves(target),
        lambda children: st.lists(children, max_size=3) | st.dictionaries(keys, children, max_size=3),
        max_leaves=5,
    )


# Structurally valid requests.
def _feature_value(draw: st.DrawFn, feature: dict[str, Any]) -> Any:
    if feature["kind"] == "categorical":
        return draw(st.sampled_from(feature["categories"] or ["x"]))
    low = feature["minimum"] if feature["minimum"] is not None else 0.0
    high = feature["maximum"] if feature["maximum"] is not None else low + 1.0
    value = draw(st.floats(low, high, allow_nan=False))
    return round(value) if draw(st.booleans()) and float(round(value)) >= low else value


def _rows(draw: st.DrawFn, target: Target, features: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Mostly 1-4 rows; one case in 20 at the limit or just past it (that many rows cost real compute).
    n = target.max_rows + draw(st.integers(0, 1)) if draw(st.integers(0, 19)) == 0 else draw(st.integers(1, 4))
    row = {f["name"]: _feature_value(draw, f) for f in features}
    if n > 4:
        return [dict(row) for _ in range(n)]
    return [{f["name"]: _feature_value(draw, f) for f in features} for _ in range(n)]


def _samples(draw: st.DrawFn, target: Target) -> Any:
    edge = [0, -1, target.max_samples, target.max_samples + 1, 2**63, 8.0, "8", True]
    return draw(st.sampled_from([None, None, None, 1, 2, 16, 64, *edge]))


def _options(draw: st.DrawFn, target: Target) -> dict[str, Any]:
    """samples, seed, sampler, tolerance: each absent, valid or at an edge (mutations add the rest)."""
    options = {
        "samples": _samples(draw, target),
        "seed": draw(st.sampled_from([None, 0, 1, 2**63 - 1, 2**63, -1, "1", 1.5])),
        "sampler": draw(st.sampled_from([None, "bank", "fresh", "local", "auto", "BANK", ""])),
        "tolerance": draw(st.sampled_from([None, 0.05, 0.5, 0.0, 1.0, -0.1, "0.1"])),
    }
    if options["tolerance"] is not None and isinstance(options["tolerance"], float) and 0 < options["tolerance"] < 1:
        options["samples"] = draw(st.sampled_from([None, 64, 128]))  # adaptive: bounded cost
    return {key: value for key, value in options.items() if value is not None}


def v1_document(draw: st.DrawFn, target: Target, model: str) -> dict[str, Any]:
    return {"instances": _rows(draw, target, target.models[model]), **_options(draw, target)}


def _v2_tensor(draw: st.DrawFn, feature: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    values = [row[feature["name"]] for row in rows]
    if feature["kind"] == "categorical":
        datatype = "BYTES"
    else:
        datatype = draw(st.sampled_from(["FP64", "FP64", "FP32", *NUMERIC_DATATYPES]))
        if datatype.startswith(("INT", "UINT")):
            values = [round(v) for v in values]
    nested = draw(st.booleans())
    return {
        "name": feature["name"],
        "shape": [len(values), 1] if nested else [len(values)],
        "datatype": datatype,
        "data": [[v] for v in values] if nested and draw(st.booleans()) else values,
    }


def v2_document(draw: st.DrawFn, target: Target, model: str) -> dict[str, Any]:
    features = target.models[model]
    rows = _rows(draw, target, features)
    document: dict[str, Any] = {"inputs": [_v2_tensor(draw, f, rows) for f in features]}
    if draw(st.booleans()):
        document["inputs"].reverse()
    if draw(st.booleans()):
        document["id"] = draw(st.sampled_from(["req-1", "", "x" * 300, "\ud800"]))
    if parameters := _options(draw, target):
        document["parameters"] = parameters
    if draw(st.booleans()):
        names = draw(st.lists(st.sampled_from(target.outputs), min_size=1, max_size=3))
        document["outputs"] = [{"name": name} for name in names]
    return document


# Mutations of a document, in place.
def _paths(node: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in the tree (keys and indices from the root), lists shortened to their first 3 items."""
    out = [at]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*at, key))
    elif isinstance(node, list):
        for index, value in enumerate(node[:3]):
            out += _paths(value, (*at, index))
    return out


def _mutate(draw: st.DrawFn, target: Target, document: dict[str, Any]) -> None:
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(_paths(document)))
        if not path:
            continue  # the root stays an object: raw cases cover other roots
        parent = document
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        operation = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add", "rename", "wrap"]))
        if operation == "replace":
            parent[last] = draw(_weird_values(target))
        elif operation == "delete":
            del parent[last]
        elif operation == "wrap":
            parent[last] = [parent[last]]
        elif isinstance(parent, dict) and operation == "add":
            parent[draw(_weird_strings(target))] = draw(_weird_values(target))
        elif isinstance(parent, dict):  # rename
            parent[draw(_weird_strings(target))] = parent.pop(last)
        else:
            parent.insert(last, draw(_weird_values(target)))


def dumps(document: Any, raw_surrogates: bool) -> bytes:
    """JSON with NaN/Infinity literals; lone surrogates as escapes, or as their (invalid UTF-8) bytes."""
    if raw_surrogates:
        return json.dumps(document, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return json.dumps(document).encode()


def _model_segment(draw: st.DrawFn, target: Target) -> str:
    """A model name as a path segment: mostly a served one, else an odd (percent-encoded or raw) one."""
    served = st.sampled_from(sorted(target.models)).map(lambda name: quote(name, safe=""))
    encoded = _weird_strings(target)
    # At most 16,000 characters encoded: httpx refuses a URL over 65,536, and 16 KiB is past h11's request line.
    odd = encoded.map(lambda s: quote(s[:20_000].encode("utf-8", "surrogatepass"), safe="")[:16_000])
    return draw(st.one_of(served, served, served, odd, st.sampled_from(SEGMENTS)))


def _json_headers(draw: st.DrawFn) -> dict[str, str]:
    if draw(st.integers(0, 9)) == 0:
        content_type = draw(st.sampled_from(CONTENT_TYPES))
        return {} if content_type is None else {"content-type": content_type}
    return {"content-type": "application/json"}


def post_route(draw: st.DrawFn, target: Target) -> tuple[str, str, str]:
    """(route, path, model) of one POST surface."""
    segment = _model_segment(draw, target)
    route = draw(st.sampled_from(["v1 predict", "kserve_v1 predict", "v2 infer"]))
    model = draw(st.sampled_from(sorted(target.models)))
    if route == "v1 predict":
        return route, f"/v1/models/{segment}/predict", model
    if route == "kserve_v1 predict":
        return route, f"/v1/models/{segment}:predict", model
    if draw(st.integers(0, 4)) == 0:
        version = draw(st.sampled_from([target.versions[model], "0", "%ED%A0%80", "..", "x" * 300]))
        return route, f"/v2/models/{segment}/versions/{version}/infer", model
    return route, f"/v2/models/{segment}/infer", model


@st.composite
def mutated(draw: st.DrawFn, target: Target) -> Case:
    route, path, model = post_route(draw, target)
    document = (v2_document if route == "v2 infer" else v1_document)(draw, target, model)
    _mutate(draw, target, document)
    body = dumps(document, raw_surrogates=draw(st.integers(0, 4)) == 0)
    return Case(f"{route} / mutated", "POST", path, _json_headers(draw), body)


def _tensor_bytes(datatype: str, data: Any) -> bytes:
    if datatype == "BYTES":
        elements = [str(v).encode("utf-8", "surrogatepass") for v in data]
        return b"".join(len(e).to_bytes(4, "little") + e for e in elements)
    with np.errstate(all="ignore"):  # a value outside the datatype's range wraps: another wrong value to send
        return np.asarray(data, dtype=np.float64).astype(DTYPES.get(datatype, "<f8")).ravel().tobytes()


@st.composite
def binary(draw: st.DrawFn, target: Target) -> Case:
    """/v2 infer as JSON then tensor bytes, with lies in the header, the sizes and the bytes."""
    model = draw(st.sampled_from(sorted(target.models)))
    segment = _model_segment(draw, target)
    document = v2_document(draw, target, model)
    chunks = []
    for tensor in document["inputs"]:
        if draw(st.integers(0, 4)) == 0:
            continue  # this one stays JSON
        chunk = _tensor_bytes(tensor["datatype"], tensor.pop("data"))
        tensor["parameters"] = {"binary_data_size": len(chunk)}
        chunks.append(chunk)
    if draw(st.booleans()):
        document.setdefault("parameters", {})["binary_data_output"] = draw(st.sampled_from([True, False, 1, "true"]))
    _mutate(draw, target, document)
    head = dumps(document, raw_surrogates=draw(st.integers(0, 4)) == 0)
    tail = b"".join(chunks)
    lie = draw(st.sampled_from(["none", "none", "none", "cut", "pad", "flip", "swap"]))
    if lie == "cut" and tail:
        tail = tail[: draw(st.integers(0, len(tail) - 1))]
    elif lie == "pad":
        tail += draw(st.binary(min_size=1, max_size=16))
    elif lie == "flip" and tail:
        at = draw(st.integers(0, len(tail) - 1))
        tail = tail[:at] + bytes([tail[at] ^ 0xFF]) + tail[at + 1 :]
    elif lie == "swap":
        tail = tail[::-1]
    body = head + tail
    length = draw(
        st.sampled_from(
            [str(len(head))] * 6
            + [str(len(head) - 1), str(len(head) + 1), "0", str(len(body)), str(len(body) + 1), "-1", "", "1 2"]
            + ["1e3", "0x10", str(2**64), "١٢", "NaN", "+" + str(len(head)), "9" * 5000]
        )
    )
    headers = {HEADER: length, "content-type": draw(st.sampled_from(["application/octet-stream", "application/json"]))}
    if draw(st.integers(0, 9)) == 0:
        del headers[HEADER]
    return Case("v2 infer / binary", "POST", f"/v2/models/{segment}/infer", headers, body)


@st.composite
def metadata(draw: st.DrawFn, target: Target) -> Case:
    """The metadata and readiness GETs with odd model names and versions (and a body, now and then)."""
    segment = _model_segment(draw, target)
    version = draw(st.sampled_from([*target.versions.values(), "0", "%ED%A0%80", "%FF", "..", "x" * 5000]))
    path = draw(
        st.sampled_from(
            [
                f"/v1/models/{segment}",
                f"/v2/models/{segment}",
                f"/v2/models/{segment}/ready",
                f"/v2/models/{segment}/versions/{version}",
                f"/v2/models/{segment}/versions/{version}/ready",
                "/v1/models",
                "/v2",
                "/",
                "/v2/health/ready",
            ]
        )
    )
    method = draw(st.sampled_from(["GET", "GET", "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"]))
    body = draw(st.sampled_from([None, None, b"{}", b"\xff"]))
    return Case(f"metadata {method}", method, path, {}, body)
