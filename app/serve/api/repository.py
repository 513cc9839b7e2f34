"""The model repository extension of the Open Inference Protocol (Triton's, which KServe and MLServer follow).

``/v2/repository/index`` lists every model folder and version, loaded or not; ``.../models/{name}/load``
(re)loads a model from disk and swaps it in atomically (``app.serve.repository``); ``.../unload`` takes it out
of service. All three need the ``admin`` scope once API keys exist (``app.serve.auth``). As Triton answers:
a load that fails is a 400 with ``{"error": ...}``, and the index is a JSON array.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body
from pydantic import BaseModel, ConfigDict

from app.serve.api.deps import DataPlaneDep
from app.serve.dataplane import DataPlane
from app.serve.errors import RequestRejected
from app.serve.repository import ModelState
from app.serve.versions import version_folders

EXTENSION = "model_repository"  # its name in GET /v2 (Triton's)
router = APIRouter(prefix="/v2/repository", tags=["v2 model repository (admin)"])
STATES = {  # this server's states in the protocol's words
    ModelState.READY: "READY",
    ModelState.LOADING: "LOADING",
    ModelState.FAILED: "UNAVAILABLE",
    ModelState.UNLOADED: "UNAVAILABLE",
}


class IndexRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repository_name: str = ""  # one repository here: "" or its folder name
    ready: bool = False  # only the models ready for inference


class IndexEntry(BaseModel):
    name: str
    version: str
    state: str  # READY, LOADING or UNAVAILABLE
    reason: str


class ControlRequest(BaseModel):
    """A load or unload body: parameters this server does not take are refused, not ignored."""

    model_config = ConfigDict(extra="forbid")

    parameters: dict[str, Any] = {}


class LoadResponse(BaseModel):
    name: str
    versions: list[str]  # the versions now served


def index_entries(dataplane: DataPlane, ready_only: bool) -> list[IndexEntry]:
    """Every entry the repository holds, then what is on disk but not served (a new folder not loaded yet, a
    version the policy leaves out)."""
    repository = dataplane.repository
    out = []
    for m in repository.entries():
        reason = m.reason or (repository.last_error(m.name) if m.state is ModelState.READY else "")
        out.append(IndexEntry(name=m.name, version=m.version, state=STATES[m.state], reason=reason))
    listed = {(e.name, e.version) for e in out}
    known = repository.names()
    for folder in repository.folders():
        for version, _ in version_folders(folder):
            if folder.name not in known:
                out.append(
                    IndexEntry(name=folder.name, version=version or "", state="UNAVAILABLE", reason="not loaded")
                )
                break
            if version is not None and (folder.name, version) not in listed:
                why = "not served: outside the version policy"
                out.append(IndexEntry(name=folder.name, version=version, state="UNAVAILABLE", reason=why))
    out.sort(key=lambda e: e.name)
    return [e for e in out if e.state == "READY"] if ready_only else out


@router.get("/index", response_model=list[IndexEntry], summary="Every model and version, loaded or not")
def index_get(dataplane: DataPlaneDep, ready: bool = False) -> list[IndexEntry]:
    return index_entries(dataplane, ready)


@router.post("/index", response_model=list[IndexEntry], summary="Every model and version, loaded or not")
def index_post(dataplane: DataPlaneDep, body: IndexRequest | None = Body(None)) -> list[IndexEntry]:  # noqa: B008
    request = body or IndexRequest()
    if request.repository_name not in ("", dataplane.repository.root.name):
        raise RequestRejected("repository_name", f"this server has one repository, not '{request.repository_name}'")
    return index_entries(dataplane, request.ready)


def _refuse_parameters(body: ControlRequest | None, accepted: set[str]) -> None:
    for key in (body.parameters if body else {}).keys() - accepted:
        raise RequestRejected(f"parameters.{key}", "not supported by this server")


@router.post("/models/{name}/load", response_model=LoadResponse, summary="Load or reload a model from disk")
async def load(
    name: str,
    dataplane: DataPlaneDep,
    body: ControlRequest | None = Body(None),  # noqa: B008
) -> LoadResponse:
    _refuse_parameters(body, set())
    outcome = await dataplane.load(name)
    if outcome.failed:
        raise RequestRejected("", outcome.error)
    return LoadResponse(name=name, versions=outcome.serving)


@router.post("/models/{name}/unload", summary="Take a model out of service")
async def unload(
    name: str,
    dataplane: DataPlaneDep,
    body: ControlRequest | None = Body(None),  # noqa: B008
) -> dict[str, Any]:
    _refuse_parameters(body, {"unload_dependents"})  # no model here depends on another: nothing more to do
    await dataplane.unload(name)
    return {}
