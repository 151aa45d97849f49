"""A job's checkpoints on its output storage: `<output>/<job>/checkpoints/<step:08d>/` with named files and a
`state.json` written last (the commit mark). Rank 0 writes them; the driver resumes a restarted group from the
newest committed one, and reads the final one as the trained model."""

from __future__ import annotations

import json
from typing import Any

from recordio import storage

STATE_JSON = "state.json"
KEEP = 2


def root(output_uri: str, job_name: str) -> str:
    """The URI under which a job's checkpoints live."""
    return storage.join(output_uri, job_name, "checkpoints")


def write(root_uri: str, step: int, files: dict[str, bytes], state: dict[str, Any],
          s3: storage.S3Options | None = None) -> str:
    """Commit checkpoint `step` (files, then state.json) and drop all but the newest KEEP; return its URI."""
    fs, base = storage.resolve(root_uri, s3)
    path = f"{base}/{step:08d}"
    fs.create_dir(path, recursive=True)
    for name, data in files.items():
        with fs.open_output_stream(f"{path}/{name}") as f:
            f.write(data)
    with fs.open_output_stream(f"{path}/{STATE_JSON}") as f:
        f.write(json.dumps(state, allow_nan=False).encode())
    for old in _committed(fs, base)[:-KEEP]:
        fs.delete_dir(f"{base}/{old:08d}")
    return storage.join(root_uri, f"{step:08d}")


def latest(root_uri: str, s3: storage.S3Options | None = None) -> str | None:
    """The URI of the newest committed checkpoint, or None."""
    fs, base = storage.resolve(root_uri, s3)
    steps = _committed(fs, base)
    return storage.join(root_uri, f"{steps[-1]:08d}") if steps else None


def read(uri: str, names: tuple[str, ...], s3: storage.S3Options | None = None) -> tuple[dict[str, bytes],
                                                                                            dict[str, Any]]:
    """(files by name, state) of the checkpoint at `uri`."""
    fs, path = storage.resolve(uri, s3)
    files = {}
    for name in names:
        with fs.open_input_stream(f"{path}/{name}") as f:
            files[name] = f.read()
    with fs.open_input_stream(f"{path}/{STATE_JSON}") as f:
        return files, json.loads(f.read())


def remove(root_uri: str, s3: storage.S3Options | None = None) -> None:
    """Delete every checkpoint of a job (once its artifact is written)."""
    import pyarrow.fs as pafs

    fs, base = storage.resolve(root_uri, s3)
    if fs.get_file_info(base).type != pafs.FileType.NotFound:
        fs.delete_dir(base)


def _committed(fs: Any, base: str) -> list[int]:
    import pyarrow.fs as pafs

    if fs.get_file_info(base).type == pafs.FileType.NotFound:
        return []
    steps = []
    for info in fs.get_file_info(pafs.FileSelector(base)):
        if info.type == pafs.FileType.Directory and info.base_name.isdigit():
            if fs.get_file_info(f"{info.path}/{STATE_JSON}").type == pafs.FileType.File:
                steps.append(int(info.base_name))
    return sorted(steps)
