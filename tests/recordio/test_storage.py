"""Storage URIs: which filesystem each scheme opens, and clear errors for the ones that cannot be opened."""

from __future__ import annotations

import os

import pyarrow.fs as pafs
import pytest

from recordio.storage import join, resolve


def test_paths_and_file_uris_open_the_local_filesystem(tmp_path):
    for uri in (str(tmp_path / "a"), f"file://{tmp_path}/a"):
        fs, path = resolve(uri)
        assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path / "a")
    assert join("s3://bucket/prefix/", "/job/", "train") == "s3://bucket/prefix/job/train"


def test_unknown_scheme_is_named():
    with pytest.raises(ValueError, match=r"unsupported storage URI scheme 'gs' in 'gs://b/x'"):
        resolve("gs://b/x")


@pytest.mark.skipif(bool(os.environ.get("HADOOP_HOME") or os.environ.get("ARROW_LIBHDFS_DIR")),
                    reason="a Hadoop client is configured on this machine")
def test_hdfs_without_a_hadoop_client_says_what_is_missing():
    with pytest.raises(OSError, match=r"cannot open 'hdfs://127.0.0.1:1/x': hdfs:// needs a Hadoop client.*libhdfs"):
        resolve("hdfs://127.0.0.1:1/x")
