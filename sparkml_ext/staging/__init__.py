"""Staging: Spark DataFrame -> RecordIO-protobuf channel (shards + manifest) at a staging URI."""

from sparkml_ext.staging.channel import Channel, channel_uri, delete_job, write_channel
from sparkml_ext.staging.validate import ChannelValidationError

__all__ = ["Channel", "ChannelValidationError", "channel_uri", "delete_job", "write_channel"]
