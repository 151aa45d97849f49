"""Model artifacts: `<output>/<job>/model/{model.json, weights.safetensors | model.ubj ..., model.json.sig}`, sha256
of every file checked on load; with $SPARKML_EXT_SIGNING_KEY set, model.json is signed (HMAC-SHA256) on save and
only artifacts it signs load.

Nothing here unpickles: model.json is JSON, weights are safetensors (numpy arrays); other named files (an xgboost
booster as UBJSON) are raw bytes, handed to the algorithm as uint8 arrays named by their file name."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ray_backend.errors import ArtifactError
from recordio import storage

MODEL_JSON = "model.json"
WEIGHTS = "weights.safetensors"
SIGNATURE = "model.json.sig"  # HMAC-SHA256 of model.json under $SPARKML_EXT_SIGNING_KEY, when set
SIGNING_KEY_ENV = "SPARKML_EXT_SIGNING_KEY"
FORMAT = "sparkml-ext-model"
FORMAT_VERSION = 1


@dataclass
class Artifact:
    """A loaded artifact: its metadata (model.json) and named weight arrays (raw files as uint8 arrays)."""

    uri: str
    meta: dict[str, Any]
    tensors: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def algorithm(self) -> str:
        return self.meta["algorithm"]

    @property
    def fingerprint(self) -> str:
        """sha256 of model.json as stored (which pins every other file's sha256)."""
        return self.meta.get("_model_json_sha256", "")


def model_uri(output_uri: str, job_name: str) -> str:
    """Where a job's artifact lives."""
    return storage.join(output_uri, job_name, "model")


def tensors_to_bytes(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    """Serialize named arrays as safetensors bytes."""
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=metadata)


def tensors_from_bytes(data: bytes, *, path: str) -> dict[str, np.ndarray]:
    """Parse safetensors bytes; a malformed file names `path`."""
    from safetensors.numpy import load

    try:
        return dict(load(data))
    except Exception as exc:  # safetensors raises its own SafetensorError and others
        raise ArtifactError(f"weights file {path!r} is not valid safetensors: {exc}") from exc


def save(uri: str, meta: dict[str, Any], tensors: dict[str, np.ndarray], *,
         s3: storage.S3Options | None = None, files: dict[str, bytes] | None = None) -> str:
    """Write weights (skipped when `tensors` is empty and `files` are given) and any extra named `files`, then
    model.json with every file's sha256 (signed when $SPARKML_EXT_SIGNING_KEY is set), under `uri`; return `uri`."""
    if "algorithm" not in meta:
        raise ValueError("artifact meta must name its 'algorithm'")
    blobs = dict(files or {})
    for name in blobs:
        if not isinstance(name, str) or "/" in name or name in ("", ".", "..", MODEL_JSON, WEIGHTS, SIGNATURE):
            raise ValueError(f"artifact file name {name!r} is not allowed")
    if tensors or not blobs:
        blobs[WEIGHTS] = tensors_to_bytes(tensors)
    body = dict(meta)
    body["format"], body["format_version"] = FORMAT, FORMAT_VERSION
    body["files"] = {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                     for name, data in blobs.items()}
    text = json.dumps(body, indent=1, sort_keys=True, allow_nan=False, default=_json_default).encode()
    key = _signing_key()
    if key is not None:
        blobs[SIGNATURE] = _sign(text, key)
    blobs[MODEL_JSON] = text
    write_files(uri, blobs, s3=s3)
    return uri


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON-serializable in model.json: {type(obj).__name__}")


def _signing_key() -> bytes | None:
    """The artifact signing key from $SPARKML_EXT_SIGNING_KEY, None when unset."""
    key = os.environ.get(SIGNING_KEY_ENV, "")
    return key.encode() if key else None


def _sign(model_json: bytes, key: bytes) -> bytes:
    """The signature file's content: HMAC-SHA256 of model.json's bytes, hex."""
    return hmac.new(key, model_json, hashlib.sha256).hexdigest().encode()


def _read(fs: Any, path: str, uri: str) -> bytes:
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError as exc:
        raise ArtifactError(f"artifact file {uri!r} is missing") from exc
    except OSError as exc:
        raise ArtifactError(f"cannot read artifact file {uri!r}: {exc}") from exc


def _signature(fs: Any, base: str, uri: str, raw: bytes, *, always: bool) -> bytes | None:
    """The signature file's bytes (read when a signing key is set, or `always`); with a key, it must sign `raw`."""
    key = _signing_key()
    if key is None and not always:
        return None
    where = storage.join(uri, SIGNATURE)
    try:
        signature = _read(fs, f"{base}/{SIGNATURE}", where)
    except ArtifactError:
        if key is not None:
            raise ArtifactError(f"artifact {uri!r} is not signed ({where!r} is missing) and ${SIGNING_KEY_ENV} is "
                                "set: only artifacts signed with that key load") from None
        return None
    if key is not None and not hmac.compare_digest(signature.strip(), _sign(raw, key)):
        raise ArtifactError(f"{storage.join(uri, MODEL_JSON)!r} fails its signature {where!r} under "
                            f"${SIGNING_KEY_ENV}: tampered, or signed with another key")
    return signature


def _read_model_json(uri: str, s3: storage.S3Options | None, *,
                     signature: bool = False) -> tuple[dict[str, Any], bytes, bytes | None]:
    """(meta, model.json's bytes, the signature's bytes) with the format and, under a signing key, the signature
    checked; `signature` reads the signature file even without a key (to copy it)."""
    fs, base = storage.resolve(uri, s3)
    where = storage.join(uri, MODEL_JSON)
    raw = _read(fs, f"{base}/{MODEL_JSON}", where)
    sig = _signature(fs, base, uri, raw, always=signature)
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise ArtifactError(f"{where!r} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ArtifactError(f"{where!r} is not a {FORMAT} model.json")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{where!r} has unsupported format_version {meta.get('format_version')!r}")
    if not isinstance(meta.get("files"), dict) or "algorithm" not in meta:
        raise ArtifactError(f"{where!r} lacks 'files' or 'algorithm'")
    meta["_model_json_sha256"] = hashlib.sha256(raw).hexdigest()
    return meta, raw, sig


def read_meta(uri: str, *, s3: storage.S3Options | None = None) -> dict[str, Any]:
    """Read and check model.json only (no weights)."""
    return _read_model_json(uri, s3)[0]


def read_files(uri: str, *, s3: storage.S3Options | None = None) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(meta, every file as bytes), each listed file's size and sha256 verified; the signature (if any) and
    model.json come last, in the order `write_files` must write them."""
    meta, raw, sig = _read_model_json(uri, s3, signature=True)
    fs, base = storage.resolve(uri, s3)
    blobs: dict[str, bytes] = {}
    for name, info in sorted(meta["files"].items()):
        if "/" in name or name in ("", ".", "..", MODEL_JSON, SIGNATURE):
            raise ArtifactError(f"model.json at {uri!r} lists an unsafe file name {name!r}")
        where = storage.join(uri, name)
        data = _read(fs, f"{base}/{name}", where)
        got = hashlib.sha256(data).hexdigest()
        if got != info.get("sha256") or len(data) != info.get("bytes"):
            raise ArtifactError(f"artifact file {where!r} fails its checksum (sha256 {got}, {len(data)} bytes; "
                                f"model.json says {info.get('sha256')}, {info.get('bytes')} bytes): "
                                "tampered or truncated")
        blobs[name] = data
    if sig is not None:
        blobs[SIGNATURE] = sig
    blobs[MODEL_JSON] = raw
    return meta, blobs


def write_files(uri: str, blobs: dict[str, bytes], *, s3: storage.S3Options | None = None) -> str:
    """Write an artifact's files in order (model.json, the commit mark, last); a stale signature is removed."""
    import pyarrow.fs as pafs

    fs, base = storage.resolve(uri, s3)
    fs.create_dir(base, recursive=True)
    if SIGNATURE not in blobs and fs.get_file_info(f"{base}/{SIGNATURE}").type != pafs.FileType.NotFound:
        fs.delete_file(f"{base}/{SIGNATURE}")
    for name, data in blobs.items():
        with fs.open_output_stream(f"{base}/{name}") as f:
            f.write(data)
    return uri


def load(uri: str, *, s3: storage.S3Options | None = None) -> Artifact:
    """Load an artifact, verifying every listed file's size and sha256 before parsing it."""
    meta, blobs = read_files(uri, s3=s3)
    blobs = {name: data for name, data in blobs.items() if name in meta["files"]}
    tensors = tensors_from_bytes(blobs.pop(WEIGHTS), path=storage.join(uri, WEIGHTS)) if WEIGHTS in blobs else {}
    tensors.update({name: np.frombuffer(data, dtype=np.uint8) for name, data in blobs.items()})
    return Artifact(uri=uri, meta=meta, tensors=tensors)


def copy(src: str, dst: str, *, s3: storage.S3Options | None = None) -> str:
    """Copy an artifact byte for byte (every file it lists, its signature, model.json), verifying checksums first."""
    return write_files(dst, read_files(src, s3=s3)[1], s3=s3)
