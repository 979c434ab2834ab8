#!/usr/bin/env python3
"""Converts a shardfeed TSV feed file (`user<TAB>item,item,...`, comment
lines only at the top, as `shardfeed gen` writes them) into Parquet with pyarrow: columns
`user_id` (uint32) and `items` (list<uint32>), for benchmarks and trials.

    scripts/tsv-to-parquet.py IN.tsv OUT.parquet [--compression snappy]
        [--row-group-size 65536] [--int64]
"""
import argparse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as csv
import pyarrow.parquet as pq

ap = argparse.ArgumentParser()
ap.add_argument("input")
ap.add_argument("output")
ap.add_argument("--compression", default="snappy")
ap.add_argument("--row-group-size", type=int, default=65536)
ap.add_argument("--int64", action="store_true", help="int64 columns (as Spark writes)")
a = ap.parse_args()
with open(a.input, "rb") as f:
    comments = 0
    for line in f:
        if not line.startswith(b"#"):
            break
        comments += 1
ints = pa.int64() if a.int64 else pa.uint32()
t = csv.read_csv(
    a.input,
    read_options=csv.ReadOptions(
        column_names=["user_id", "items"], skip_rows=comments, block_size=64 << 20),
    parse_options=csv.ParseOptions(delimiter="\t", quote_char=False),
    convert_options=csv.ConvertOptions(column_types={"user_id": ints, "items": pa.string()}),
)
items = pc.cast(pc.split_pattern(t["items"], ","), pa.list_(ints))
out = pa.table({"user_id": t["user_id"], "items": items})
pq.write_table(out, a.output, compression=a.compression, row_group_size=a.row_group_size)
m = pq.ParquetFile(a.output).metadata
print(f"{a.output}: {m.num_rows} rows, {m.num_row_groups} row groups, {a.compression}")
