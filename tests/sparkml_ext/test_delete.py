"""Deleting staging data removes one job prefix and refuses anything that could reach outside it."""

from __future__ import annotations

import pytest

from sparkml_ext import channel_uri, delete_job


def test_delete_job_removes_only_that_job(tmp_path):
    for job in ("job", "job2", "jobx"):
        (tmp_path / job / "train").mkdir(parents=True)
        (tmp_path / job / "train" / "part-00000-000.rec").write_bytes(b"x")
    (tmp_path / "job.rec").write_bytes(b"keep")
    assert delete_job(str(tmp_path), "job")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.rec", "job2", "jobx"]
    assert not delete_job(str(tmp_path), "job"), "deleting a missing job is a no-op"
    assert delete_job(f"file://{tmp_path}", "job2") and not (tmp_path / "job2").exists()


@pytest.mark.parametrize("job", ["", "..", "../x", "a/b", "/abs", ".hidden", "a/../..", "x\\y", " "])
def test_delete_job_refuses_unsafe_names(tmp_path, job):
    (tmp_path / "keep").mkdir()
    with pytest.raises(ValueError, match="unsafe job name"):
        delete_job(str(tmp_path / "keep"), job)
    assert (tmp_path / "keep").exists()


def test_channel_uri():
    assert channel_uri("s3://b/staging/", "job-1", "train") == "s3://b/staging/job-1/train"
    with pytest.raises(ValueError, match="unsafe channel name"):
        channel_uri("/tmp/s", "job", "../train")
