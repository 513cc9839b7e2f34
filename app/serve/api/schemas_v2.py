"""Wire schemas of the Open Inference Protocol (KServe v2) REST API, as the published spec names them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

TensorData = list[Any]  # flat or nested row-major values
Parameters = dict[str, str | int | float | bool]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Lenient(BaseModel):
    """A request object: fields a client adds (``model_name``, ``model_version``, …) are kept aside in
    ``model_extra`` and ignored, as the protocol allows; only a misspelt known field is refused (api/v2.py)."""

    model_config = ConfigDict(extra="allow")


class ServerMetadataResponse(_Wire):
    name: str
    version: str
    extensions: list[str]


class LiveResponse(_Wire):
    live: bool


class NotReadyModel(_Wire):
    name: str
    version: str
    state: str  # loading or failed
    reason: str


class ReadyResponse(_Wire):
    ready: bool
    reason: str | None = None  # why not (a 503 only)
    models: list[NotReadyModel] | None = None  # the models keeping the server from being ready (a 503 only)


class ModelReadyResponse(_Wire):
    name: str
    ready: bool


class TensorMetadata(_Wire):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadataResponse(_Wire):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class RequestInput(_Lenient):
    """An input tensor; ``data`` is JSON's values, or the array read from binary data (api/v2_binary.py)."""

    name: str
    shape: list[int] = Field(min_length=1, max_length=3)
    datatype: str
    parameters: Parameters | None = None
    data: TensorData | None = Field(None, description="The values, unless parameters.binary_data_size is given.")


class RequestOutput(_Lenient):
    name: str
    parameters: Parameters | None = None


class InferenceRequest(_Lenient):
    id: str | None = None
    parameters: Parameters | None = Field(None, description="May carry 'samples' and 'seed'.")
    inputs: list[RequestInput] = Field(min_length=1, description="One tensor of shape [N] per feature.")
    outputs: list[RequestOutput] | None = Field(None, description="Outputs to return (default: all).")


class ResponseOutput(_Wire):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: TensorData | None = Field(None, description="The values, unless parameters.binary_data_size is given.")


class InferenceResponse(_Wire):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]


class ErrorResponse(_Wire):
    error: str
