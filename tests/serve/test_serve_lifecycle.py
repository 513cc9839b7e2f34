"""`sbnn serve` from start to stop: a missing repository is a start-up error, `--watch` reloads what changed on
disk, `sbnn models` drives a running server, SIGTERM drains then cancels at the deadline and exits 0, and the
server runs on a read-only root filesystem with only its tmp folder writable."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import BUNDLED, FLCHAIN_ROW, REPO, wait_until_ready
from test_repository_api import TINY_ROW, write_version
from typer.testing import CliRunner

from app.cli import app as cli
from app.serve.auth import KeyScope, keys_json, new_key

PREDICT = "/v1/models/{}/predict"


def _env(**settings: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SBNN_")}
    return env | {"SBNN_DEVICE": "cpu", "SBNN_GRPC_PORT": "0"} | {f"SBNN_{k.upper()}": v for k, v in settings.items()}


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(command, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)


def _serve(port: int, *options: str) -> list[str]:
    return [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port), *options]


def test_a_missing_repository_stops_sbnn_serve_with_a_clear_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--models", str(tmp_path / "modles")],
        env=_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "does not exist (SBNN_MODELS / --models): nothing to serve" in " ".join(done.stderr.split())


def _sha(base: str, name: str, row: dict[str, Any]) -> str | None:
    answer = httpx.post(base + PREDICT.format(name), json={"instances": [row]}, timeout=30.0)
    return answer.json()["model"]["sha256"] if answer.status_code == 200 else None


def _until(condition: Callable[[], bool], log: Path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)


def test_watch_reloads_a_changed_model_loads_a_new_one_and_unloads_a_removed_one(
    tiny_checkpoint: Path, tmp_path: Path, free_port: Callable[[], int]
) -> None:
    root, spare = tmp_path / "models", tmp_path / "spare"
    old = write_version(tiny_checkpoint, root / "tiny", "1")
    new = write_version(tiny_checkpoint, spare / "tiny", "2", shift=0.01)
    port, log = free_port(), tmp_path / "serve.log"
    base = f"http://127.0.0.1:{port}"
    process = _start(_serve(port, "--models", str(root), "--watch"), _env(watch_debounce_s="0.5"), log)
    try:
        wait_until_ready(process, base, log)
        assert _sha(base, "tiny", TINY_ROW) == old
        os.rename(root / "tiny", root / ".tiny-old")  # hidden: ignored by the watcher
        os.rename(spare / "tiny", root / "tiny")
        _until(lambda: _sha(base, "tiny", TINY_ROW) == new, log)
        shutil.copytree(BUNDLED, root / "flchain-mortality")
        _until(lambda: _sha(base, "flchain-mortality", FLCHAIN_ROW) is not None, log)
        shutil.rmtree(root / "tiny")
        _until(lambda: _sha(base, "tiny", TINY_ROW) is None, log)
        assert "model tiny unloaded" in log.read_text()
        assert httpx.get(f"{base}/v2/health/ready").status_code == 200  # an unloaded model is not waited for
    finally:
        _stop(process)


@pytest.fixture
def keyed_server(
    model_repository: Path, tmp_path: Path, free_port: Callable[[], int]
) -> Iterator[tuple[str, dict[str, str], Path]]:
    """`sbnn serve` with an admin key and an infer key: its URL, the tokens by scope and its log."""
    made = {scope: new_key(f"{scope.value}-key", [scope]) for scope in (KeyScope.ADMIN, KeyScope.INFER)}
    keys = tmp_path / "keys.json"
    keys.write_text(keys_json([entry for _, entry in made.values()]))
    port, log = free_port(), tmp_path / "serve.log"
    command = _serve(port, "--models", str(model_repository), "--api-keys-file", str(keys))
    process = _start(command, _env(ready_when="any"), log)
    try:
        wait_until_ready(process, f"http://127.0.0.1:{port}", log)
        yield f"http://127.0.0.1:{port}", {scope.value: token for scope, (token, _) in made.items()}, log
    finally:
        _stop(process)


def test_sbnn_models_lists_unloads_and_loads_on_a_running_server(
    keyed_server: tuple[str, dict[str, str], Path],
) -> None:
    url, tokens, log = keyed_server
    text = log.read_text()  # the start-up log: a line per model, then the summary
    assert "model tiny ready: version 1, lowrank, torch backend, bank 64 samples from seed 0, weights" in text
    assert "model broken not ready:" in text and "2 models ready, 1 failed (broken)" in text
    runner = CliRunner()
    admin = ["--url", url, "--token", tokens["admin"]]
    listed = runner.invoke(cli, ["models", "list", *admin])
    assert listed.exit_code == 0, listed.output
    lines = {line.split()[0]: line.split() for line in listed.output.splitlines()[1:] if line.strip()}
    assert lines["tiny"][2] == "READY" and lines["broken"][2] == "UNAVAILABLE" and "sha256" in listed.output
    unloaded = runner.invoke(cli, ["models", "unload", "tiny", *admin])
    assert unloaded.exit_code == 0 and "tiny: unloaded" in unloaded.output
    assert httpx.post(url + PREDICT.format("tiny"), json={"instances": [TINY_ROW]}).status_code == 401  # no key
    loaded = runner.invoke(cli, ["models", "load", "tiny", *admin])
    assert loaded.exit_code == 0 and "tiny: serving version(s) 1" in loaded.output, loaded.output
    failed = runner.invoke(cli, ["models", "load", "broken", *admin])
    assert failed.exit_code == 1 and "400 model 'broken' failed to load" in failed.output
    denied = runner.invoke(cli, ["models", "unload", "tiny", "--url", url, "--token", tokens["infer"]])
    assert denied.exit_code == 1 and "403 key 'infer-key' lacks the 'admin' scope" in denied.output
    nobody = runner.invoke(cli, ["models", "list", "--url", "http://127.0.0.1:9"])
    assert nobody.exit_code == 2 and "cannot reach" in nobody.output


def _flchain_only(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(BUNDLED, root / "flchain-mortality")
    return root


def _post_in_thread(url: str, body: dict[str, Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """POST ``body`` on a thread of its own; the dict gets "answer" (the response) or "error" (the exception)."""
    outcome: dict[str, Any] = {}

    def send() -> None:
        try:
            outcome["answer"] = httpx.post(url, json=body, timeout=120.0)
        except httpx.HTTPError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread, outcome


@pytest.mark.parametrize(("stop", "deadline_s"), [(signal.SIGTERM, 30.0), (signal.SIGTERM, 0.5), (signal.SIGINT, 30.0)])
def test_a_stop_signal_drains_requests_in_flight_until_the_deadline_and_exits_0(
    tmp_path: Path, free_port: Callable[[], int], stop: signal.Signals, deadline_s: float
) -> None:
    """A request of about three seconds' compute: with 30 s it finishes, with 0.5 s it is cancelled at the
    deadline; either way the process exits 0 (a stop asked for), not 143."""
    port, log = free_port(), tmp_path / "serve.log"
    base = f"http://127.0.0.1:{port}"
    # No budget or deadline of the request's own in the way on a busy machine: only the shutdown's.
    env = _env(
        max_rows="1024", max_request_compute_s="600", request_timeout_s="600", shutdown_timeout_s=str(deadline_s)
    )
    process = _start(_serve(port, "--models", str(_flchain_only(tmp_path))), env, log)
    try:
        wait_until_ready(process, base, log)
        body = {"instances": [FLCHAIN_ROW] * 1024, "samples": 4096, "seed": 1, "sampler": "fresh"}
        sender, outcome = _post_in_thread(base + PREDICT.format("flchain-mortality"), body)
        started = 'sbnn_inference_stage_duration_seconds_count{model="flchain-mortality",stage="queue"} 1.0'
        _until(lambda: started in httpx.get(f"{base}/metrics").text, log, 20.0)  # out of the queue: computing
        signalled = time.monotonic()
        process.send_signal(stop)
        code = process.wait(timeout=deadline_s + 30)
        stopped = time.monotonic() - signalled
        sender.join(timeout=30)
        text = log.read_text()
        assert code == 0 and "Application shutdown complete" in text, text
        if deadline_s > 5:
            assert outcome["answer"].status_code == 200, (outcome, outcome["answer"].text)
            assert len(outcome["answer"].json()["predictions"]) == 1024
        else:
            assert "answer" not in outcome or outcome["answer"].status_code >= 500, outcome
            assert "timeout graceful shutdown exceeded" in text
            assert stopped < deadline_s + 2.0, stopped  # the request stopped at its next piece, not at its end
    finally:
        _stop(process)


def test_serves_on_a_read_only_root_with_only_the_tmp_dir_writable(
    model_repository: Path, tmp_path: Path, free_port: Callable[[], int]
) -> None:
    """Every mount remounted read-only in a user and mount namespace of its own (loopback network as usual),
    a tmpfs on SBNN_TMP_DIR: the models load and answer (torch's compiler asks for a temporary folder)."""
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("user namespaces are not available here (unshare -rm)")
    writable = tmp_path / "writable"
    writable.mkdir()
    port, log = free_port(), tmp_path / "serve.log"
    serve = " ".join(_serve(port, "--models", str(model_repository), "--tmp-dir", str(writable)))
    script = (
        'for m in $(awk "{print \\$2}" /proc/self/mounts); do mount -o remount,bind,ro "$m" 2>/dev/null; done; '
        f"mount -t tmpfs tmpfs {writable} && touch {REPO}/.rw-probe 2>/dev/null && exit 9; exec {serve}"
    )
    process = _start(["unshare", "-rm", "sh", "-c", script], _env(ready_when="any", tmp_dir=""), log)
    try:
        wait_until_ready(process, f"http://127.0.0.1:{port}", log)
        assert _sha(f"http://127.0.0.1:{port}", "tiny", TINY_ROW) is not None
        assert "not ready" not in log.read_text().replace("model broken not ready", "")
    finally:
        _stop(process)
    assert not (REPO / ".rw-probe").exists()
