"""A DataFrame of records (load_records()'s columns) as the rows the report's queries read.

The report's figures are computed once, in SQL (ragmon.report.summary and
ragmon.report.timeline); a notebook's frame reaches them as a DuckDB view over the registered
frame, with the same columns as the log's rows: stage_<name> columns become the stage map,
attr_<key> columns the attribute map of JSON values, and the frame's order is the read order.
"""
from __future__ import annotations

import json

from .reader import ATTR_PREFIX, COUNT_COLUMNS, FLOAT_COLUMNS, HISTORY_END, STAGE_PREFIX, STRING_COLUMNS, sql_quote

_NUMBERS = ("total_time", *FLOAT_COLUMNS, "cost_original")
_COUNTS = COUNT_COLUMNS


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _json_text(value):
    """An attribute value of an object column as JSON text (tuples were lists)."""
    if value is None or value != value:
        return None
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value, default=str)


def register_frame(con, df, name: str = "frame_rows") -> None:
    """Creates the view ``all_rows`` over `df` on `con` (every row valid: the frame holds what
    the reader kept)."""
    import numpy as np
    import pandas as pd

    missing = {"timestamp", "total_time"} - set(df.columns)
    if missing:
        raise ValueError(f"the DataFrame lacks the column(s) {sorted(missing)}; pass the frame "
                         "of load_records() (one row per request)")
    n = len(df)
    data = {"end_time": pd.DatetimeIndex(df["timestamp"]).asi8 / 1e9,
            "seq": np.arange(n, dtype="int64") + HISTORY_END}
    columns = ["true AS valid", "end_time", "seq", "end_time - total_time AS start_time"]
    for column in _NUMBERS + _COUNTS:
        if column in df:
            data[column] = df[column].to_numpy(dtype="float64" if column in _NUMBERS else "int64")
            columns.append(f"CASE WHEN isnan({column}) THEN NULL ELSE {column} END AS {column}"
                           if column in _NUMBERS else column)
        else:
            columns.append(f"NULL::{'DOUBLE' if column in _NUMBERS else 'BIGINT'} AS {column}")
    for column in ("request_id", *STRING_COLUMNS, "price_match"):
        if column in df:
            data[column] = df[column].astype(object).where(df[column].notna(), None).to_numpy()
            columns.append(f"{column}::VARCHAR AS {column}")
        else:
            columns.append(f"NULL::VARCHAR AS {column}")
    stages, attributes = [], []
    for i, column in enumerate(c for c in df.columns if c.startswith(STAGE_PREFIX)):
        data[f"s{i}"] = df[column].to_numpy(dtype="float64")
        stages.append(f"{{'key': {sql_quote(column[len(STAGE_PREFIX):])}, 'value': "
                      f"{{'duration': CASE WHEN isnan(s{i}) THEN NULL ELSE s{i} END}}}}")
    for i, column in enumerate(c for c in df.columns if c.startswith(ATTR_PREFIX)):
        values = df[column]
        key = sql_quote(column[len(ATTR_PREFIX):])
        if values.dtype.kind in "fiu":
            data[f"a{i}"] = values.to_numpy(dtype="float64")
            value = f"CASE WHEN isnan(a{i}) THEN NULL ELSE to_json(a{i}) END"
        elif isinstance(values.dtype, pd.CategoricalDtype) or values.dtype == "string":
            data[f"a{i}"] = values.astype(object).where(values.notna(), None).to_numpy()
            value = f"to_json(a{i}::VARCHAR)"
        else:
            data[f"a{i}"] = np.array([_json_text(v) for v in values], dtype=object)
            value = f"a{i}::JSON"
        attributes.append(f"{{'key': {key}, 'value': {value}}}")
    columns.append(f"map_from_entries(list_filter([{', '.join(stages)}], e -> e.value.duration "
                   "IS NOT NULL)) AS stage_map" if stages
                   else "MAP {}::MAP(VARCHAR, STRUCT(duration DOUBLE)) AS stage_map")
    columns.append(f"map_from_entries(list_filter([{', '.join(attributes)}], e -> e.value "
                   "IS NOT NULL)) AS attributes" if attributes
                   else "MAP {}::MAP(VARCHAR, JSON) AS attributes")
    # A table, not the registered frame itself: the report's queries run on cursors of their
    # own, which see the database's tables but not the connection's registrations.
    con.register("registered_frame", pd.DataFrame(data, copy=False))
    con.execute(f"CREATE TABLE {_ident(name)} AS SELECT * FROM registered_frame")
    con.unregister("registered_frame")
    con.execute(f"CREATE VIEW all_rows AS SELECT {', '.join(columns)} FROM {_ident(name)}")
