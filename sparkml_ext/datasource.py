"""Spark Python Data Source "recordio-protobuf" (Spark >= 4.0): spark.read/df.write .format("recordio-protobuf")."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Iterator

from recordio.storage import S3Options

FORMAT_NAME = "recordio-protobuf"
_S3_OPTIONS = {"s3.endpoint": "endpoint_override", "s3.region": "region", "s3.accesskey": "access_key",
               "s3.secretkey": "secret_key", "s3.sessiontoken": "session_token", "s3.scheme": "scheme"}


def s3_from_options(options) -> S3Options:
    """S3 settings from data source options (s3.endpoint, s3.region, s3.accessKey, ...), else the environment."""
    given = {field: options[key] for key, field in _S3_OPTIONS.items() if options.get(key)}
    if not given:
        return S3Options.from_env()
    return S3Options(**given)


def _features_option(value: str) -> str | list[str]:
    """featuresCol option: one column, or several numeric columns separated by commas."""
    names = [v.strip() for v in value.split(",") if v.strip()]
    return names if len(names) > 1 else value.strip()


def _truthy(value, default: bool) -> bool:
    return default if value is None else str(value).lower() in ("1", "true", "yes")


def _make_classes():
    """Build the DataSource classes lazily so importing sparkml_ext does not import pyspark."""
    from pyspark.sql.datasource import (
        DataSource,
        DataSourceArrowWriter,
        DataSourceReader,
        InputPartition,
        WriterCommitMessage,
    )

    from sparkml_ext.reader import SourceFile, arrow_schema, group_files, list_sources, read_file, spark_schema

    class FilesPartition(InputPartition):
        def __init__(self, files: list[dict]):
            super().__init__(json.dumps(files))

    class RecordIOReader(DataSourceReader):
        def __init__(self, groups: list[list[dict]], s3: dict, has_label: bool, has_uid: bool, verify: bool):
            self.groups, self.s3, self.verify = groups, s3, verify
            self.has_label, self.has_uid = has_label, has_uid

        def partitions(self):
            return [FilesPartition(g) for g in self.groups] or [InputPartition(None)]

        def read(self, partition) -> Iterator:
            if partition.value is None:
                return
            schema = arrow_schema(self.has_label, self.has_uid)
            for f in json.loads(partition.value):
                yield from read_file(SourceFile(**f), self.s3, schema, self.verify)

    @dataclasses.dataclass
    class ShardsMessage(WriterCommitMessage):
        shards_json: str

    class RecordIOWriter(DataSourceArrowWriter):
        def __init__(self, options, schema, overwrite: bool):
            self.options, self.overwrite = dict(options), overwrite
            self.path = options.get("path")
            if not self.path:
                raise ValueError("df.write.format('recordio-protobuf') needs a path: .save(path)")
            from sparkml_ext.staging.channel import prepare_channel

            prepare_channel(self.path, s3_from_options(self.options), overwrite)

        def _cfg(self) -> dict:
            o = self.options
            return {"uri": self.path, "s3": dataclasses.asdict(s3_from_options(o)),
                    "features": _features_option(o.get("featurescol", "features")), "label": o.get("labelcol") or None,
                    "uid": o.get("uidcol") or None, "dtype": o.get("dtype", "float32"), "plan": {}}

        def write(self, iterator) -> ShardsMessage:
            import pyarrow as pa
            from pyspark import TaskContext

            from sparkml_ext.staging.validate import FeatureSpec, partition_stats
            from sparkml_ext.staging.writer import write_partition

            cfg = self._cfg()
            feats = cfg["features"]
            names = tuple(feats) if isinstance(feats, list) else (feats,)
            spec = FeatureSpec("columns", names, cfg["label"], cfg["uid"], training=False)
            stats: list[dict] = []

            def observed(batches):
                for b in batches:
                    kind = "columns"
                    if isinstance(feats, str):
                        kind = "vector" if pa.types.is_struct(b.schema.field(feats).type) else "array"
                    stats.append(partition_stats(iter([b]), dataclasses.replace(spec, kind=kind)))
                    yield b

            ctx = TaskContext.get()
            shards = write_partition(observed(iterator), cfg, ctx.partitionId(), ctx.attemptNumber())
            sizes = Counter()
            for s in stats:
                for d, c in s["sizes"]:
                    sizes[d] += c
            return ShardsMessage(json.dumps({"shards": shards, "sizes": sorted(sizes.items()),
                                             "sparse_rows": sum(s["sparse_rows"] for s in stats)}))

        def commit(self, messages) -> None:
            from sparkml_ext.staging.channel import finish_channel

            bodies = [json.loads(m.shards_json) for m in messages if m is not None]
            cfg = self._cfg()
            finish_channel(self.path, bodies, cfg, s3_from_options(self.options))

        def abort(self, messages) -> None:
            from sparkml_ext.staging.channel import abort_channel

            abort_channel(self.path, s3_from_options(self.options))

    class RecordIODataSource(DataSource):
        """recordio-protobuf: read a channel / directory / file of RecordIO-protobuf; write a channel."""

        @classmethod
        def name(cls) -> str:
            return FORMAT_NAME

        def _sources(self):
            path = self.options.get("path")
            if not path:
                raise ValueError("spark.read.format('recordio-protobuf') needs a path: .load(path)")
            return list_sources(path, s3_from_options(self.options))

        def schema(self):
            src = self._sources()
            return spark_schema(src.has_label, src.has_uid)

        def reader(self, schema):
            src = self._sources()
            verify = _truthy(self.options.get("verify"), True)
            parallelism = int(self.options.get("parallelism", 8))
            groups = [[dataclasses.asdict(f) for f in g] for g in group_files(src.files, parallelism)]
            return RecordIOReader(groups,
                                  dataclasses.asdict(s3_from_options(self.options)),
                                  src.has_label, src.has_uid, verify)

        def writer(self, schema, overwrite: bool):
            return RecordIOWriter(self.options, schema, overwrite)

    return RecordIODataSource


def register_data_source(spark) -> bool:
    """Register the "recordio-protobuf" format on this session; False where the Spark version lacks the API."""
    try:
        data_source = _make_classes()
    except ImportError:
        return False
    spark.dataSource.register(data_source)
    return True
