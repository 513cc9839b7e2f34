"""``--watch``: reload a model when files under its folder change, once they have been quiet for a while.

Changes are grouped by model (the first path part under the repository root); a model reloads when no file of
it has changed for ``debounce_s``, so a copy in progress is not loaded half-way (and if it is, its sha256 fails,
the old version keeps serving, and the copy's next change reloads it again). A new folder is loaded; a folder
removed is unloaded. Hidden files and folders (``.name``, editors' and copy tools' temporaries) are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from app.serve.dataplane import DataPlane
from app.serve.errors import ModelNotFound

log = logging.getLogger("sbnn.serve")


class ModelWatcher:
    """Watches ``dataplane``'s repository root; ``run`` until cancelled."""

    def __init__(self, dataplane: DataPlane, debounce_s: float) -> None:
        self.dataplane = dataplane
        self.debounce_s = debounce_s
        self.root = dataplane.repository.root.resolve()
        self._changed: dict[str, float] = {}  # model name -> loop time of its last file change
        self._settling: dict[str, asyncio.Task[None]] = {}

    def model_of(self, path: str) -> str | None:
        """The model a changed path belongs to; None for the root itself or a hidden path."""
        try:
            parts = Path(path).resolve().relative_to(self.root).parts
        except ValueError:
            return None
        if not parts or any(part.startswith(".") for part in parts):
            return None
        return parts[0]

    async def run(self) -> None:
        from watchfiles import awatch  # imported on use: serving without --watch never loads it

        stop = asyncio.Event()
        log.info("watching %s for model changes (reload after %g s quiet)", self.root, self.debounce_s)
        try:
            async for changes in awatch(self.root, stop_event=stop, debounce=1000, step=100):
                now = asyncio.get_running_loop().time()
                for name in {self.model_of(path) for _, path in changes} - {None}:
                    assert name is not None
                    self._changed[name] = now
                    task = self._settling.get(name)
                    if task is None or task.done():
                        self._settling[name] = asyncio.create_task(self._settle(name), name=f"watch-{name}")
        finally:
            stop.set()
            for task in self._settling.values():
                task.cancel()
            for task in self._settling.values():
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _settle(self, name: str) -> None:
        """Wait until ``name``'s files have been quiet for the debounce time, then reload (or unload) it; again
        if they changed while it reloaded."""
        loop = asyncio.get_running_loop()
        while True:
            while (wait := self._changed[name] + self.debounce_s - loop.time()) > 0:
                await asyncio.sleep(wait)
            seen = self._changed[name]
            await self._apply(name)
            if self._changed[name] == seen:
                return

    async def _apply(self, name: str) -> None:
        repository = self.dataplane.repository
        try:
            if (repository.root / name).is_dir():
                outcome = await self.dataplane.load(name)
                if not outcome.failed:
                    log.info("watch: model %s reloaded (serving version %s)", name, ", ".join(outcome.serving))
            elif name in repository.names():
                await self.dataplane.unload(name)
        except ModelNotFound:
            pass  # removed meanwhile: the next change says what to do
        except Exception as exc:  # a watcher's failure never stops the server; the model keeps what it had
            log.error("watch: reloading model %s failed: %s", name, exc)
