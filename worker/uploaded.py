"""Uploaded datasets on a worker: fetched once over HTTP, cached by data hash in memory and on disk.

The disk cache (``GRIDSWEEP_DATA_CACHE_DIR``) is shared by the workers of a host: a file is
written under a temporary name and renamed, so a reader never sees half of one, and it is
checked against its data hash when read, so a damaged file is fetched again.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from gridsweep.client import ApiClient
from gridsweep.datasets import Dataset
from gridsweep.payload import fingerprint, unpack

log = logging.getLogger("gridsweep.worker")


class UploadedDatasets:
    def __init__(self, client: ApiClient, cache_dir: str | Path | None = None) -> None:
        self.client = client
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self._mem: dict[str, tuple[Dataset, dict[str, Any]]] = {}
        self.fetches = 0  # HTTP downloads made by this process

    def _path(self, data_hash: str) -> Path | None:
        return self.cache_dir / f"{data_hash}.npz" if self.cache_dir else None

    def _from_disk(self, data_hash: str) -> tuple[Dataset, dict[str, Any]] | None:
        path = self._path(data_hash)
        if path is None or not path.exists():
            return None
        try:
            ds, meta = unpack(path.read_bytes())
            if fingerprint(ds) == data_hash:
                return ds, meta
        except Exception:  # a damaged or foreign file: fetch again
            log.warning("cached dataset %s is unreadable; fetching it again", path, exc_info=True)
        path.unlink(missing_ok=True)
        return None

    def _to_disk(self, data_hash: str, raw: bytes) -> None:
        path = self._path(data_hash)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
            os.replace(tmp, path)
        except OSError:  # a read-only or full disk costs a fetch next time, not the trial
            log.warning("cannot cache dataset at %s", path, exc_info=True)

    def get(self, dataset_id: int, data_hash: str | None) -> tuple[Dataset, dict[str, Any]]:
        """The dataset and its meta (target, encoding); raises ValueError if the data is not as expected."""
        key = data_hash or f"id:{dataset_id}"
        if key in self._mem:
            return self._mem[key]
        found = self._from_disk(data_hash) if data_hash else None
        if found is None:
            raw = self.client.request("GET", f"/api/v1/datasets/{dataset_id}/data", raw=True)
            self.fetches += 1
            ds, meta = unpack(raw)
            got = fingerprint(ds)
            if data_hash and got != data_hash:
                raise ValueError(f"dataset {dataset_id} arrived with data hash {got}, expected {data_hash}")
            self._to_disk(got, raw)
            found = (ds, meta)
        self._mem[key] = found
        return found
