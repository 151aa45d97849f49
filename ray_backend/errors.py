"""Typed errors for the engine: each message names the parameter or file at fault."""

from __future__ import annotations


class EngineError(ValueError):
    """Base of the errors this package raises for bad input."""


class ChannelError(EngineError):
    """A channel URI, manifest or shard is missing, malformed or inconsistent."""


class ArtifactError(EngineError):
    """A model artifact is missing a file, fails its checksum, or is malformed."""


class JobError(RuntimeError):
    """A training job failed on the cluster (after its retries)."""
