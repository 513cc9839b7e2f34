"""Raw bodies for bench/fuzz.py: bytes that are no well-formed request (invalid UTF-8, truncated JSON, deep
nesting, duplicated keys, integers past 4,300 digits, a BOM, UTF-16, random bytes, wrong Content-Type,
gzip and deflate bodies, unknown encodings), and the fixed corpus of known-dangerous cases every run sends first.
"""

from __future__ import annotations

import gzip
import json
import sys
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.fuzz_cases import (  # noqa: E402
    CONTENT_TYPES,
    ENCODINGS,
    HEADER,
    SENTINEL,
    Case,
    Target,
    dumps,
    post_route,
    v1_document,
    v2_document,
)


@lru_cache(maxsize=4)
def _bomb(limit: int, encoding: str) -> bytes:
    """A small compressed body that inflates to 8 times the body limit (a bomb to be refused, not inflated)."""
    plain = b"[" + b"0," * (4 * limit) + b"0]"
    return gzip.compress(plain, 9) if "gzip" in encoding else zlib.compress(plain, 9)


def _deep(depth: int, opener: bytes, closer: bytes, leaf: bytes = b"1") -> bytes:
    return opener * depth + leaf + closer * depth


@st.composite
def raw(draw: st.DrawFn, target: Target) -> Case:
    """Bytes that are not a well-formed request, to one of the POST routes."""
    route, path, model = post_route(draw, target)
    document = (v2_document if route == "v2 infer" else v1_document)(draw, target, model)
    valid = dumps(document, raw_surrogates=False)
    first = b'"instances":' if route != "v2 infer" else b'"inputs":'
    depth = draw(st.sampled_from([64, 500, 1000, 5000, 100_000]))
    kind = draw(
        st.sampled_from(
            ["invalid utf-8", "truncated", "deep", "duplicate", "digits", "bom", "utf-16", "random", "literal"]
            + ["encoding", "encoding", "content-type"]
        )
    )
    headers: dict[str, str] = {"content-type": "application/json"}
    if kind == "invalid utf-8":
        junk = draw(st.sampled_from([b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80", b"\xe2\x82"]))
        at = draw(st.integers(0, len(valid)))
        body = valid[:at] + junk + valid[at:]
    elif kind == "truncated":
        body = valid[: draw(st.integers(0, len(valid) - 1))]
    elif kind == "deep":
        nest = draw(st.sampled_from(["list", "object", "in instances", "in data"]))
        if nest == "list":
            body = _deep(depth, b"[", b"]")
        elif nest == "object":
            body = _deep(depth, b'{"a":', b"}")
        elif nest == "in instances":
            body = b"{" + first + _deep(depth, b"[", b"]", b"{}") + b"}"
        else:
            body = b'{"inputs":[{"name":"age","shape":[1],"datatype":"FP64","data":' + _deep(depth, b"[", b"]") + b"}]}"
    elif kind == "duplicate":
        inner = valid[1:-1]
        body = b"{" + inner + b"," + draw(st.sampled_from([inner, first + b"[]", b'"seed":1,"seed":2'])) + b"}"
    elif kind == "digits":  # past Python's 4,300-digit limit of int(str), where json.loads raises ValueError
        digits = draw(st.sampled_from([b"", b"-", b"0."])) + b"9" * draw(st.sampled_from([4300, 4301, 5000, 100_000]))
        where = draw(st.sampled_from(["value", "samples"]))
        if where == "samples":
            options = document.setdefault("parameters", {}) if route == "v2 infer" else document
            options["samples"] = SENTINEL
        elif route == "v2 infer":
            document["inputs"][0]["data"] = [SENTINEL]
        else:
            document["instances"][0][next(iter(document["instances"][0]))] = SENTINEL
        body = dumps(document, raw_surrogates=False).replace(json.dumps(SENTINEL).encode(), digits)
    elif kind == "bom":
        body = b"\xef\xbb\xbf" + valid
    elif kind == "utf-16":
        body = valid.decode().encode(draw(st.sampled_from(["utf-16", "utf-16-le", "utf-32"])))
    elif kind == "random":
        body = draw(st.binary(max_size=256))
    elif kind == "literal":
        body = draw(st.sampled_from([b"", b" ", b"null", b"[]", b"{}", b'"x"', b"1", b"NaN", b"-Infinity", b"[{}]"]))
    elif kind == "encoding":
        encoding = draw(st.sampled_from(ENCODINGS))
        form = draw(st.sampled_from(["valid", "bomb", "corrupt", "cut", "plain"]))
        if form == "bomb" and encoding in ("gzip", "x-gzip", "GZIP", "deflate"):
            body = _bomb(target.max_body_bytes, encoding.lower())
        elif form in ("valid", "cut", "bomb"):
            body = zlib.compress(valid) if encoding == "deflate" else gzip.compress(valid)
            body = body[: len(body) // 2] if form == "cut" else body
        elif form == "corrupt":
            body = draw(st.binary(min_size=1, max_size=64))
        else:
            body = valid
        headers["content-encoding"] = encoding
    else:
        body = valid
        content_type = draw(st.sampled_from(CONTENT_TYPES))
        headers = {} if content_type is None else {"content-type": content_type}
    return Case(f"{route} / raw {kind}", "POST", path, headers, body)


def corpus(target: Target) -> list[Case]:
    """Fixed cases sent first in every run (hypothesis' explicit examples), one per known-dangerous input, so a
    small run sends them too: integers past 4,300 digits, a 5,000-digit header length, nesting 100,000 deep,
    lone surrogates (escaped and raw) in a key, a value, the model name, an input name and the /v2 id, NaN and
    Infinity literals, a gzip bomb."""
    model = "flchain-mortality" if "flchain-mortality" in target.models else sorted(target.models)[0]
    features = target.models[model]
    row = {f["name"]: (f["categories"] or ["x"])[0] if f["kind"] == "categorical" else f["minimum"] for f in features}
    first = features[0]["name"]
    v1, v2 = f"/v1/models/{quote(model, safe='')}/predict", f"/v2/models/{quote(model, safe='')}/infer"
    kserve = f"/v1/models/{quote(model, safe='')}:predict"
    inputs = [
        {"name": f["name"], "shape": [1], "datatype": "BYTES" if f["kind"] == "categorical" else "FP64", "data": [v]}
        for f, v in zip(features, row.values(), strict=True)
    ]
    digits = b"9" * 5000
    as_json = {"content-type": "application/json"}

    def v1_body(**change: Any) -> bytes:
        return json.dumps({"instances": [{**row, **change}]}).encode()

    def v2_body(**change: Any) -> bytes:
        return json.dumps({"inputs": inputs, **change}).encode()

    bodies = [
        (
            "v1 predict / corpus",
            v1,
            as_json,
            v1_body(**{first: SENTINEL}).replace(b'"' + SENTINEL.encode() + b'"', digits),
        ),
        ("kserve_v1 predict / corpus", kserve, as_json, v1_body().replace(b"}]}", b'}], "seed": ' + digits + b"}")),
        (
            "v2 infer / corpus",
            v2,
            as_json,
            v2_body(parameters={"samples": SENTINEL}).replace(b'"' + SENTINEL.encode() + b'"', digits),
        ),
        ("v2 infer / corpus", v2, {HEADER: "9" * 5000}, v2_body()),
        ("v1 predict / corpus", v1, as_json, b'{"instances":' + _deep(100_000, b"[", b"]") + b"}"),
        ("v2 infer / corpus", v2, as_json, _deep(100_000, b'{"a":', b"}")),
        ("v1 predict / corpus", v1, as_json, v1_body(**{"\ud800": 1})),
        ("v1 predict / corpus", v1, as_json, v1_body(**{first: "\udfff"}).replace(b"\\udfff", b"\xed\xbf\xbf")),
        ("v2 infer / corpus", "/v2/models/%ED%A0%80/infer", as_json, v2_body()),
        ("v2 infer / corpus", v2, as_json, v2_body(id="\ud800")),
        (
            "v2 infer / corpus",
            v2,
            as_json,
            json.dumps({"inputs": [{**inputs[0], "name": "\udc00"}, *inputs[1:]]}).encode(),
        ),
        ("v1 predict / corpus", v1, as_json, v1_body(**{first: float("nan")})),
        ("v2 infer / corpus", v2, as_json, v2_body().replace(b"]}", b", Infinity]}", 1)),
        ("v1 predict / corpus", v1, {**as_json, "content-encoding": "gzip"}, _bomb(target.max_body_bytes, "gzip")),
    ]
    return [Case(surface, "POST", path, headers, body) for surface, path, headers, body in bodies]
