"""Reading examples: JSONL (instruction or chat form), CSV with a column mapping, or a directory.

The reader lives in the shared layer (``enclave.records``), because compress reads the same data
sets and must agree with tune on their splits (``enclave.splits``); these are its names in tune.
"""

from __future__ import annotations

from enclave.records import (
    ROLES,
    SPLITS,
    DataError,
    Record,
    load_records,
    parse_record,
    read_records,
    resolve_path,
)

__all__ = ["ROLES", "SPLITS", "DataError", "Record", "load_records", "parse_record", "read_records", "resolve_path"]
