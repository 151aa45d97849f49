"""Channel manifests: the JSON that lists a channel's committed shards (the single source of truth for readers)."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field

from recordio.errors import RecordIOError

MANIFEST_NAME = "manifest.json"
SAGEMAKER_MANIFEST_NAME = "manifest.sagemaker.json"
FORMAT = "recordio-protobuf"
VERSION = 1
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _shard_problem(path: object, sha256: object) -> str | None:
    """What is wrong with a shard entry (None when nothing): its path must be a plain file name in the channel
    directory (no separator, no `..`, not absolute), so no reader copies or opens anything outside it, and its
    sha256 64 lowercase hex digits, so every reader can check it."""
    if not isinstance(path, str) or not path or path in (".", "..") or any(c in path for c in "/\\\0"):
        return f"shard path {path!r} is not a plain file name in the channel directory"
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        return f"shard {path!r} has sha256={sha256!r}, not 64 lowercase hex digits"
    return None


@dataclass(frozen=True)
class Shard:
    """One committed shard file of a channel; `path` is a file name in the channel directory."""

    path: str
    records: int
    bytes: int
    sha256: str

    def __post_init__(self) -> None:
        problem = _shard_problem(self.path, self.sha256)
        if problem:
            raise ValueError(problem)


@dataclass(frozen=True)
class Manifest:
    """What a channel holds: totals, feature layout, and its shards in a deterministic order."""

    channel: str
    feature_dim: int
    sparse: bool
    dtypes: dict[str, str]
    has_label: bool
    has_uid: bool
    shards: tuple[Shard, ...]
    format: str = FORMAT
    version: int = VERSION
    extra: dict = field(default_factory=dict)

    @property
    def records(self) -> int:
        return sum(s.records for s in self.shards)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    def to_json(self) -> str:
        """Serialize with totals included, keys sorted, so equal manifests are equal bytes."""
        body = asdict(self)
        body["shards"] = [asdict(s) for s in self.shards]
        body["records"] = self.records
        body["bytes"] = self.bytes
        return json.dumps(body, sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, text: str | bytes, *, path: str | None = None) -> Manifest:
        """Parse and check a manifest; a missing field or a wrong format names the manifest file."""
        try:
            body = json.loads(text)
            if body.get("format") != FORMAT:
                raise RecordIOError(f"not a {FORMAT} manifest (format={body.get('format')!r})", path=path)
            if body.get("version") != VERSION:
                raise RecordIOError(f"unsupported manifest version {body.get('version')!r}", path=path)
            for s in body["shards"]:
                problem = _shard_problem(s.get("path"), s.get("sha256"))
                if problem:
                    raise RecordIOError(problem, path=path)
            shards = tuple(Shard(**s) for s in body["shards"])
            manifest = cls(
                channel=body["channel"],
                feature_dim=int(body["feature_dim"]),
                sparse=bool(body["sparse"]),
                dtypes=dict(body["dtypes"]),
                has_label=bool(body["has_label"]),
                has_uid=bool(body["has_uid"]),
                shards=shards,
                extra=dict(body.get("extra", {})),
            )
        except RecordIOError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RecordIOError(f"malformed manifest: {exc!r}", path=path) from exc
        for key in ("records", "bytes"):
            if key in body and body[key] != getattr(manifest, key):
                raise RecordIOError(f"manifest total {key}={body[key]} disagrees with its shards", path=path)
        return manifest

    def sagemaker_manifest(self, prefix: str) -> str:
        """SageMaker's ManifestFile form: [{"prefix": ...}, "part-...", ...]."""
        prefix = prefix if prefix.endswith("/") else prefix + "/"
        return json.dumps([{"prefix": prefix}, *[s.path for s in self.shards]])
