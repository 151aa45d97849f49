"""Stage once, fit many: staged channels kept in this process and reused by later fits on the same data.

A fit asks for its (train, validation) DataFrames staged with given options. An earlier staging is reused when
- the DataFrames have the same analysed plan (Spark's `sameSemantics`) and the same staging options, and
- either both fits run inside one `fitMultiple` call (CrossValidator, TrainValidationSplit, a param grid: one
  dataset, many param maps), or the plans are deterministic, read only files, local rows or ranges, and every input
  file still has the size and modification time it had when staged (a rewritten source is staged again).
Anything else (a `rand()` column, an RDD, a JDBC or other external source) is staged afresh for each fit.

Kept stagings are deleted when more than $SPARKML_EXT_STAGED_CACHE (default 4) are held and idle (least recently
used first), at `sparkml_ext.shutdown()` and at process exit; one that cannot be reused is deleted when its fit
ends. keepStagingData=True keeps a staging on storage for good (it is never deleted by us).
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import shutil
import tempfile
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from recordio.storage import S3Options
from sparkml_ext.staging.channel import Channel, delete_job

log = logging.getLogger(__name__)

CACHE_ENV = "SPARKML_EXT_STAGED_CACHE"
_REUSABLE_LEAVES = {"LocalRelation", "Range", "OneRowRelation"}
_MAX_FINGERPRINT_FILES = 10_000
_scope_ids = itertools.count(1)


@dataclass(frozen=True)
class Scope:
    """One fitMultiple call: its fits may share a staging even when the data's plan is not deterministic."""

    id: int = field(default_factory=lambda: next(_scope_ids))
    _memo: dict = field(default_factory=dict, compare=False, repr=False)
    _memo_lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    def memo(self, key: tuple, source: Any, make: Callable[[], Any]) -> Any:
        """What `make()` gave for `key` of this very `source` object earlier in the scope (one randomSplit of a
        DataFrame shared by every fit, so each fit skips the split's plan building)."""
        with self._memo_lock:
            held = self._memo.get(key)
            if held is None or held[0] is not source:
                held = self._memo[key] = (source, make())
            return held[1]


@dataclass
class _Entry:
    frames: tuple  # (train DataFrame, validation DataFrame or None), compared with sameSemantics
    options: tuple
    fingerprint: tuple | None  # None: reusable only within `scope`
    scope: Scope | None
    staging: str
    prefix: str
    s3: S3Options | None
    keep: bool
    channels: tuple[Channel, Channel | None] | None = None
    error: BaseException | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    users: int = 0


_lock = threading.Lock()
_entries: OrderedDict[int, _Entry] = OrderedDict()  # least recently used first
_ids = itertools.count(1)
_default_dir: str | None = None


def default_staging() -> str:
    """This process's staging directory for fits without a stagingUri (removed at exit)."""
    global _default_dir
    with _lock:
        if _default_dir is None:
            _default_dir = tempfile.mkdtemp(prefix="sparkml-ext-")
        return _default_dir


def capacity() -> int:
    """How many idle stagings are kept for reuse ($SPARKML_EXT_STAGED_CACHE, default 4; 0 = none)."""
    raw = os.environ.get(CACHE_ENV, "4")
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"${CACHE_ENV} must be a non-negative integer, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"${CACHE_ENV} must be a non-negative integer, got {raw!r}")
    return value


def fingerprint(df) -> tuple | None:
    """What identifies a DataFrame's data across fits: its application, and the size and modification time of
    every input file; None when its plan is not deterministic or reads anything else than files, local rows or
    ranges (Spark Connect: None)."""
    jdf = getattr(df, "_jdf", None)
    if jdf is None:
        return None
    plan = jdf.queryExecution().analyzed()
    if not plan.deterministic():
        return None
    leaves = plan.collectLeaves()
    for i in range(leaves.size()):
        leaf = leaves.apply(i)
        kind = leaf.getClass().getSimpleName()
        if kind == "LogicalRelation":
            if leaf.relation().getClass().getSimpleName() != "HadoopFsRelation":
                return None
        elif kind not in _REUSABLE_LEAVES:
            return None
    files = df.inputFiles()
    if len(files) > _MAX_FINGERPRINT_FILES:
        return None
    spark = df.sparkSession
    jvm, conf = spark._jvm, spark._jsc.hadoopConfiguration()
    stats = []
    for name in sorted(files):
        path = jvm.org.apache.hadoop.fs.Path(name)
        st = path.getFileSystem(conf).getFileStatus(path)
        stats.append((name, int(st.getLen()), int(st.getModificationTime())))
    return (spark.sparkContext.applicationId, tuple(stats))


def _same_frames(a: tuple, b: tuple) -> bool:
    for x, y in zip(a, b, strict=True):
        if (x is None) != (y is None):
            return False
        if x is not None and x is not y and not x.sameSemantics(y):
            return False
    return True


def _find(frames: tuple, options: tuple, fp: tuple | None, scope: Scope | None) -> _Entry | None:
    for entry in reversed(_entries.values()):
        if entry.options != options or entry.error is not None:
            continue
        if entry.fingerprint is not None and fp is not None:
            if entry.fingerprint != fp:
                continue
        elif scope is None or entry.scope != scope:
            continue
        if _same_frames(entry.frames, frames):
            return entry
    return None


@contextmanager
def staged(train_df, val_df, options: tuple, write: Callable[[str, str], tuple[Channel, Channel | None]], *,
           staging: str, s3: S3Options | None, keep: bool, reuse: bool = True,
           scope: Scope | None = None) -> Iterator[tuple[Channel, Channel | None]]:
    """Yield (train, validation) channels of these DataFrames: an earlier staging of the same data and options, or
    a new one made by `write(staging, prefix)`; afterwards keep it for reuse or delete it (see the module doc)."""
    frames = (train_df, val_df)
    options = (staging, *options)
    fp = None
    if reuse:
        fps = [fingerprint(df) for df in frames if df is not None]
        fp = tuple(fps) if all(f is not None for f in fps) else None
    reusable = reuse and (fp is not None or scope is not None)
    with _lock:
        entry = _find(frames, options, fp, scope) if reusable else None
        mine = entry is None
        if mine:
            entry = _Entry(frames, options, fp, scope, staging, f"staged-{uuid.uuid4().hex[:12]}", s3, keep)
            if reusable:
                _entries[next(_ids)] = entry
        entry.users += 1
        _touch(entry)
    try:
        if mine:
            try:
                entry.channels = write(staging, entry.prefix)
            except BaseException as exc:
                entry.error = exc
                raise
            finally:
                entry.ready.set()
        else:
            entry.ready.wait()
            if entry.error is not None:
                raise RuntimeError("staging this DataFrame failed in a concurrent fit") from entry.error
            log.info("reusing staged data %s/%s (%d records)", entry.staging, entry.prefix,
                     entry.channels[0].records)
        yield entry.channels
    finally:
        with _lock:
            entry.users -= 1
            drop = [entry] if not reusable or entry.error is not None else []
            for key in [k for k, e in _entries.items() if e in drop]:
                del _entries[key]
            drop += _evict_locked()
        _delete(drop)


def _touch(entry: _Entry) -> None:
    for key, e in _entries.items():
        if e is entry:
            _entries.move_to_end(key)
            return


def _evict_locked(limit: int | None = None) -> list[_Entry]:
    """Remove the least recently used idle entries beyond the limit; return them for deletion."""
    limit = capacity() if limit is None else limit
    idle = [k for k, e in _entries.items() if e.users == 0]
    out = []
    for key in idle[:max(0, len(_entries) - limit)] if len(_entries) > limit else []:
        out.append(_entries.pop(key))
    return out


def end_scope(scope: Scope) -> None:
    """A fitMultiple call finished: forget its stagings that only it could reuse."""
    with _lock:
        drop = [k for k, e in _entries.items() if e.scope == scope and e.fingerprint is None and e.users == 0]
        entries = [_entries.pop(k) for k in drop]
    _delete(entries)


def release_all() -> None:
    """Delete every idle kept staging (sparkml_ext.shutdown() and process exit)."""
    with _lock:
        entries = [_entries.pop(k) for k, e in list(_entries.items()) if e.users == 0]
    _delete(entries)


def held() -> list[str]:
    """`<staging>/<prefix>` of the stagings kept for reuse, least recently used first (for tests and logs)."""
    with _lock:
        return [f"{e.staging}/{e.prefix}" for e in _entries.values()]


def _delete(entries: list[_Entry]) -> None:
    for e in entries:
        if e.keep:
            continue
        try:
            delete_job(e.staging, e.prefix, s3=e.s3)
        except Exception as exc:  # noqa: BLE001 (cleanup must not mask the fit's own outcome)
            log.warning("could not delete staged data %s/%s: %s", e.staging, e.prefix, exc)


def _at_exit() -> None:
    release_all()
    if _default_dir is not None:
        shutil.rmtree(_default_dir, ignore_errors=True)


atexit.register(_at_exit)
