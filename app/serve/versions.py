"""A model's versions on disk and which of them to serve (the version policy).

A model is a folder under the repository root, in one of two layouts (both as KServe and Triton lay them out):

- ``models/<name>/manifest.json``: one checkpoint, whose version is its manifest's;
- ``models/<name>/<version>/manifest.json``: one checkpoint per version folder, whose manifest must name that
  version. Every visible sub-folder is a version then (one still being copied fails and is said so).

The policy picks what is served: ``latest`` (the highest version), ``all``, or the versions pinned for the
model. Versions order naturally (``2 < 10``, ``1.2 < 1.10``); a request without a version gets the highest
ready one.
"""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path


class VersionPolicy(str, Enum):
    LATEST = "latest"  # the highest version only
    ALL = "all"  # every version folder


MANIFEST = "manifest.json"


def version_order(version: str) -> list[tuple[int, int | str]]:
    """A sort key: digit runs compare as numbers, the rest as text (``"2" < "10"``, ``"1.2" < "1.10"``)."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", version) if part]


def version_folders(folder: Path) -> list[tuple[str | None, Path]]:
    """The checkpoint folders of the model at ``folder`` as (version, path), lowest version first; the version
    is None for the one-checkpoint layout (its manifest names it)."""
    if (folder / MANIFEST).is_file():
        return [(None, folder)]
    versions = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if not any((p / MANIFEST).is_file() for p in versions):
        return [(None, folder)]  # neither layout: loading the folder itself says what is missing
    return [(p.name, p) for p in sorted(versions, key=lambda p: version_order(p.name))]


def select(
    versions: list[tuple[str | None, Path]], policy: VersionPolicy, pinned: list[str] | None
) -> tuple[list[tuple[str | None, Path]], list[str]]:
    """The versions to serve under ``policy`` (or the ``pinned`` ones), and the pinned versions not on disk."""
    if versions and versions[0][0] is None:
        return versions, []  # one checkpoint: served whatever its version (a pin is checked once it is read)
    if pinned is not None:
        on_disk = {version for version, _ in versions}
        return [v for v in versions if v[0] in pinned], [p for p in pinned if p not in on_disk]
    return (versions[-1:] if policy is VersionPolicy.LATEST else versions), []
