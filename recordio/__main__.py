"""`python -m recordio inspect|validate FILE`: look inside a RecordIO-protobuf file, or check it end to end."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from recordio.errors import RecordIOError
from recordio.stream import iter_columns


def summarize(path: str, head: int = 3) -> dict:
    """Decode the whole file in bounded memory and describe it: counts, layout, dtypes, label presence, first rows."""
    records = 0
    sparse_records = 0
    dim = 0
    kinds: set[str] = set()
    label_dtypes: set[str] = set()
    has_label = has_uid = False
    first: list[dict] = []
    for cols in iter_columns(path):
        records += cols.num_records
        sparse_records += int(cols.sparse.sum())
        dim = max(dim, int(cols.dims.max(initial=0)))
        kinds.add(cols.kind)
        if cols.labels is not None:
            has_label = True
            label_dtypes.add(str(cols.labels.dtype))
        has_uid = has_uid or cols.uids is not None
        for i in range(min(head - len(first), cols.num_records)):
            a, b = cols.indptr[i], cols.indptr[i + 1]
            entry = {"values": _preview(cols.values[a:b])}
            if cols.sparse[i]:
                entry = {"keys": _preview(cols.keys[a:b]), **entry, "shape": [int(cols.dims[i])]}
            if cols.labels is not None:
                entry["label"] = cols.labels[i].item()
            if cols.uids is not None:
                entry["uid"] = cols.uids[i]
            first.append(entry)
    return {
        "file": path,
        "records": records,
        "feature_dim": dim,
        "layout": "empty" if not records else "dense" if not sparse_records else
        "sparse" if sparse_records == records else "mixed",
        "feature_dtypes": sorted(kinds) if records else [],
        "label": sorted(label_dtypes) if has_label else None,
        "uid": has_uid,
        "first_records": first,
    }


def _preview(row: np.ndarray, width: int = 8) -> list:
    vals = [v.item() for v in row[:width]]
    return vals + ["..."] if row.size > width else vals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recordio", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_inspect = sub.add_parser("inspect", help="print records, feature dim, layout, dtypes, labels, first records")
    p_inspect.add_argument("file")
    p_inspect.add_argument("--head", type=int, default=3, help="how many records to show")
    p_validate = sub.add_parser("validate", help="decode every record; exit 1 with the error if any is bad")
    p_validate.add_argument("file")
    args = parser.parse_args(argv)
    try:
        summary = summarize(args.file, head=args.head if args.command == "inspect" else 0)
    except RecordIOError as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    if args.command == "inspect":
        print(json.dumps(summary, indent=2))
    else:
        print(f"ok: {summary['records']} records, feature_dim {summary['feature_dim']}, {summary['layout']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
