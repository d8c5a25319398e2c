"""The issue files of a folder, each read again only when it changes: the scheduler asks every tick,
and re-reading every file each minute would cost a YAML parse per issue per tick."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")


class ChangedFiles(Generic[T]):
    """``read()`` parses each ``*.yaml`` of ``folder`` with ``parse`` when it is new or its size or
    modification time changed since the last read; the others come from the last read."""

    def __init__(self, folder: Path, parse: Callable[[Path], T]) -> None:
        self.folder = folder
        self.parse = parse
        self._cache: dict[Path, tuple[tuple[int, int], T]] = {}

    def read(self) -> list[T]:
        """What ``parse`` made of each file, in file-name order."""
        found: dict[Path, tuple[tuple[int, int], T]] = {}
        for path in sorted(self.folder.glob("*.yaml")):
            try:
                info = path.stat()
            except OSError:  # removed while we looked
                continue
            signature = (info.st_mtime_ns, info.st_size)
            cached = self._cache.get(path)
            found[path] = cached if cached and cached[0] == signature else (signature, self.parse(path))
        self._cache = found
        return [value for _, value in found.values()]
