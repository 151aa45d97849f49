"""Channel reading: Pipe vs File, exactly-once union over workers, FullyReplicated, bad input, s3."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import scipy.sparse as sp

from ray_backend.channels import ChannelReader, ChannelSpec, load_manifest
from ray_backend.errors import ChannelError
from ray_backend.sharding import FULLY_REPLICATED, SHARDED_BY_KEY, assign
from recordio.errors import RecordIOError
from tests.ray_backend.helpers import id_parts, write_channel


def read_ids(uri: str, workers: int, distribution: str, mode: str, epochs: int = 1, s3=None,
             batch: int = 7) -> list[list[np.ndarray]]:
    """For each worker, for each epoch, the record ids it read (feature 0 of each record)."""
    manifest = load_manifest(uri, s3)
    spec = ChannelSpec(uri, distribution=distribution, input_mode=mode)
    out = []
    for slices in assign(manifest, workers, distribution):
        reader = ChannelReader("train", spec, manifest, slices, s3=s3)
        try:
            per_epoch = []
            for _ in range(epochs):
                ids = [np.asarray(c.features[:, 0].todense()).ravel() if sp.issparse(c.features)
                       else c.features[:, 0] for c in reader.batches(batch)]
                per_epoch.append(np.concatenate(ids) if ids else np.zeros(0))
            out.append(per_epoch)
            if mode == "File":  # remote shards are copied to local disk once; local ones are read in place
                remote = uri.startswith("s3://")
                assert (reader._local_dir is not None) == remote
                assert not remote or os.path.isdir(reader._local_dir)
        finally:
            reader.close()
    return out


@pytest.mark.parametrize("mode", ["Pipe", "File"])
@pytest.mark.parametrize("workers", [1, 2, 3, 8])
def test_sharded_by_key_union_is_every_record_once(tmp_path, mode, workers):
    uri = write_channel(tmp_path / "train", id_parts([50, 17, 33]))
    got = read_ids(uri, workers, SHARDED_BY_KEY, mode, epochs=2)
    for epoch in range(2):
        ids = np.concatenate([w[epoch] for w in got])
        assert np.array_equal(np.sort(ids), np.arange(100))
    # Each worker reads the same records in the same order every epoch.
    for w in got:
        assert np.array_equal(w[0], w[1])


@pytest.mark.parametrize("mode", ["Pipe", "File"])
def test_fully_replicated_every_worker_reads_everything(tmp_path, mode):
    uri = write_channel(tmp_path / "train", id_parts([20, 5]))
    for w in read_ids(uri, 3, FULLY_REPLICATED, mode):
        assert np.array_equal(np.sort(w[0]), np.arange(25))


def test_sparse_channel_splits_by_record_ranges(tmp_path):
    x, y = id_parts([40])[0]
    uri = write_channel(tmp_path / "train", [(sp.csr_matrix(x), y)])
    got = read_ids(uri, 4, SHARDED_BY_KEY, "Pipe")
    assert [len(w[0]) for w in got] == [10, 10, 10, 10]
    assert np.array_equal(np.sort(np.concatenate([w[0] for w in got])), np.arange(40))


def test_labels_follow_their_records(tmp_path):
    uri = write_channel(tmp_path / "train", id_parts([30, 30]))
    manifest = load_manifest(uri)
    for slices in assign(manifest, 5, SHARDED_BY_KEY):
        reader = ChannelReader("train", ChannelSpec(uri), manifest, slices)
        for chunk in reader.batches(4):
            assert np.array_equal(chunk.features[:, 0], chunk.labels)


def test_missing_manifest_names_the_uri(tmp_path):
    with pytest.raises(ChannelError, match="manifest.json"):
        load_manifest(str(tmp_path / "nope"))


def test_malformed_manifest_is_rejected(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ChannelError, match="manifest"):
        load_manifest(str(tmp_path))


@pytest.mark.parametrize("mode", ["File", "Pipe"])
@pytest.mark.parametrize("flip", ["mantissa", "structure"])
def test_a_tampered_shard_is_refused(tmp_path, mode, flip):
    """A flipped mantissa bit decodes fine and fails the manifest's sha256; a broken record fails to decode (naming
    the file and offset). Either way the epoch raises: a tampered channel never trains to the end."""
    parts = id_parts([10])
    uri = write_channel(tmp_path / "train", parts)
    shard = tmp_path / "train" / "part-00000-000.rec"
    data = bytearray(shard.read_bytes())
    at = data.find(parts[0][0][9, 1].tobytes()) if flip == "mantissa" else len(data) - 5
    assert at > 0
    data[at] ^= 0x01 if flip == "mantissa" else 0xFF
    shard.write_bytes(bytes(data))
    manifest = load_manifest(uri)
    reader = ChannelReader("train", ChannelSpec(uri, input_mode=mode), manifest, assign(manifest, 1)[0])
    with pytest.raises((ChannelError, RecordIOError), match="sha256" if flip == "mantissa" else "part-00000-000"):
        list(reader.batches(4))


def test_shard_with_fewer_records_than_its_manifest_says(tmp_path):
    uri = write_channel(tmp_path / "train", id_parts([10]))
    text = (tmp_path / "train" / "manifest.json").read_text().replace('"records": 10', '"records": 12')
    (tmp_path / "train" / "manifest.json").write_text(text)
    manifest = load_manifest(uri)
    reader = ChannelReader("train", ChannelSpec(uri), manifest, assign(manifest, 1)[0])
    with pytest.raises(ChannelError, match="holds 10 records"):
        list(reader.batches(4))


@pytest.mark.parametrize("kwargs,match", [({"input_mode": "Stream"}, "input_mode"),
                                          ({"distribution": "Random"}, "distribution"),
                                          ({"read_ahead": 0}, "read_ahead"), ({"uri": ""}, "uri")])
def test_bad_channel_spec_is_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ChannelSpec(**{"uri": "/x", **kwargs})


def test_read_ahead_is_bounded(tmp_path):
    """The producer thread never runs more than read_ahead chunks ahead of the consumer."""
    uri = write_channel(tmp_path / "train", [p for p in id_parts([300] * 10)])
    manifest = load_manifest(uri)
    reader = ChannelReader("train", ChannelSpec(uri, read_ahead=2), manifest, assign(manifest, 1)[0])
    produced = []
    original = reader._produce

    def counting():
        for c in original():
            produced.append(c.num_records)
            yield c

    reader._produce = counting
    it = reader.chunks()
    next(it)
    import time

    time.sleep(0.3)
    assert 1 < len(produced) <= 1 + 2 + 1  # consumed + queued + one blocked in put
    it.close()


def test_file_mode_decodes_once_and_pipe_mode_streams_every_epoch(tmp_path):
    """File mode keeps a complete epoch's decoded chunks and hands the same arrays out again without reading bytes;
    a partial epoch, Pipe mode, or an epoch over the memory budget keeps nothing."""
    uri = write_channel(tmp_path / "train", id_parts([50, 17, 33]))
    manifest = load_manifest(uri)
    slices = assign(manifest, 1, SHARDED_BY_KEY)[0]

    def reader(mode: str) -> ChannelReader:
        r = ChannelReader("train", ChannelSpec(uri, input_mode=mode), manifest, slices)
        r.streams = 0
        stream = r._stream

        def counted():
            r.streams += 1
            yield from stream()

        r._stream = counted
        return r

    file = reader("File")
    next(iter(file.chunks()))  # a consumer that stops early (e.g. the scaling pre-pass)
    assert not file.cached
    first = list(file.chunks())
    assert file.cached and file.streams == 2
    again = list(file.chunks())
    assert file.streams == 2 and all(a.features is b.features and a.labels is b.labels
                                     for a, b in zip(first, again, strict=True))
    assert np.array_equal(np.concatenate([c.features[:, 0] for c in file.batches(7)]), np.arange(100))
    file.close()
    assert not file.cached

    pipe = reader("Pipe")
    for _ in range(2):
        assert sum(c.num_records for c in pipe.chunks()) == 100
    assert not pipe.cached and pipe.streams == 2

    tight = reader("File")
    tight._cache_budget = lambda: 1000  # bytes: less than one epoch's arrays
    for _ in range(3):
        assert sum(c.num_records for c in tight.chunks()) == 100
    assert not tight.cached and tight.streams == 3
    tight.close()


def upload_channel(local: str, s3, bucket: str, key: str) -> str:
    """Copy a local channel directory to s3://bucket/key; return its URI."""
    import pyarrow.fs as pafs

    from recordio import storage

    fs, _ = storage.resolve(f"s3://{bucket}/x", s3)
    pafs.copy_files(local, f"{bucket}/{key}", source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    return f"s3://{bucket}/{key}"


def test_s3_channel_pipe_and_file(s3_server, tmp_path):
    s3, bucket = s3_server
    uri = upload_channel(write_channel(tmp_path / "train", id_parts([30, 12])), s3, bucket, "channels/train")
    for mode in ("Pipe", "File"):
        got = read_ids(uri, 3, SHARDED_BY_KEY, mode, s3=s3)
        assert np.array_equal(np.sort(np.concatenate([w[0] for w in got])), np.arange(42))
