"""The aialgs.data.Record protobuf schema (SageMaker's record.proto), built at import time without protoc."""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto


def _file() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(name="sparkml_ext/aialgs_record.proto", package="aialgs.data",
                                             syntax="proto2")

    def msg(name: str):
        return fdp.message_type.add(name=name)

    def field(m, name, number, ftype, label=_F.LABEL_OPTIONAL, type_name=None, packed=False, oneof=None):
        f = m.field.add(name=name, number=number, type=ftype, label=label)
        if type_name:
            f.type_name = type_name
        if packed:
            f.options.packed = True
        if oneof is not None:
            f.oneof_index = oneof
        return f

    for name, vtype in (("Float32Tensor", _F.TYPE_FLOAT), ("Float64Tensor", _F.TYPE_DOUBLE),
                        ("Int32Tensor", _F.TYPE_INT32)):
        m = msg(name)
        field(m, "values", 1, vtype, _F.LABEL_REPEATED, packed=True)
        field(m, "keys", 2, _F.TYPE_UINT64, _F.LABEL_REPEATED, packed=True)
        field(m, "shape", 3, _F.TYPE_UINT64, _F.LABEL_REPEATED, packed=True)

    m = msg("Bytes")
    field(m, "value", 1, _F.TYPE_BYTES, _F.LABEL_REPEATED)
    field(m, "content_type", 2, _F.TYPE_STRING)

    m = msg("Value")
    m.oneof_decl.add(name="value")
    field(m, "float32_tensor", 2, _F.TYPE_MESSAGE, type_name=".aialgs.data.Float32Tensor", oneof=0)
    field(m, "float64_tensor", 3, _F.TYPE_MESSAGE, type_name=".aialgs.data.Float64Tensor", oneof=0)
    field(m, "int32_tensor", 7, _F.TYPE_MESSAGE, type_name=".aialgs.data.Int32Tensor", oneof=0)
    field(m, "bytes", 9, _F.TYPE_MESSAGE, type_name=".aialgs.data.Bytes", oneof=0)

    m = msg("Record")
    for map_name, number, entry_name in (("features", 1, "FeaturesEntry"), ("label", 2, "LabelEntry")):
        entry = m.nested_type.add(name=entry_name)
        entry.options.map_entry = True
        field(entry, "key", 1, _F.TYPE_STRING)
        field(entry, "value", 2, _F.TYPE_MESSAGE, type_name=".aialgs.data.Value")
        field(m, map_name, number, _F.TYPE_MESSAGE, _F.LABEL_REPEATED,
              type_name=f".aialgs.data.Record.{entry_name}")
    field(m, "uid", 3, _F.TYPE_STRING)
    field(m, "metadata", 4, _F.TYPE_STRING)
    field(m, "configuration", 5, _F.TYPE_STRING)
    return fdp


_pool = descriptor_pool.DescriptorPool()
_pool.Add(_file())


def _cls(name: str):
    return message_factory.GetMessageClass(_pool.FindMessageTypeByName(f"aialgs.data.{name}"))


Float32Tensor = _cls("Float32Tensor")
Float64Tensor = _cls("Float64Tensor")
Int32Tensor = _cls("Int32Tensor")
Bytes = _cls("Bytes")
Value = _cls("Value")
Record = _cls("Record")
