"""The trials of a search as one Parquet table with an explicit schema (for pandas, DuckDB, Spark ...).

The schema is fixed so that tables from different jobs concatenate: columns a job did not log are written as
nulls, columns outside the schema are dropped, and values are cast to the schema's types (a lossy cast, such as
3.5 into an int32 column, is an error).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = "2"  # 2: lap_weighting, test_psnr_y/test_ssim_y, vs_bicubic_db, below_bicubic

TRIALS_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("run_name", pa.string()),
        pa.field("status", pa.string()),  # completed | stopped-early | infeasible | failed | running
        pa.field("parent_run_id", pa.string()),
        pa.field("trial_number", pa.int32()),
        pa.field("family", pa.string()),
        pa.field("arch", pa.string()),
        pa.field("C", pa.int32()),
        pa.field("L", pa.int32()),
        pa.field("B", pa.int32()),
        pa.field("scale", pa.int32()),
        pa.field("seed", pa.int64()),
        pa.field("w_gt", pa.float64()),
        pa.field("w_lap", pa.float64()),
        pa.field("w_hf", pa.float64()),
        pa.field("lr", pa.float64()),
        pa.field("lap_weighting", pa.string()),  # Laplacian KD level weights: authors | flat | normalized
        pa.field("paper_rule", pa.bool_()),
        pa.field("psnr_y", pa.float64()),  # dB, on the validation set (the search objective)
        pa.field("ssim_y", pa.float64()),
        pa.field("val_psnr_y", pa.float64()),  # dB, last validation step
        pa.field("test_psnr_y", pa.float64()),  # dB, on the first test set (reported, never selected on)
        pa.field("test_ssim_y", pa.float64()),
        pa.field("vs_bicubic_db", pa.float64()),  # test (else validation) PSNR_Y minus bicubic's on the same set
        pa.field("below_bicubic", pa.bool_()),  # vs_bicubic_db < 0: bicubic (0 params) dominates the model
        pa.field("params", pa.int64()),
        pa.field("macs_720p", pa.int64()),  # MACs for a 1280x720 output
        pa.field("macs_lr256", pa.int64()),  # MACs for a 256x256 LR input
        pa.field("latency_ms", pa.float64()),
        pa.field("latency_device", pa.string()),
        pa.field("train_time_s", pa.float64()),
        pa.field("kd_gain_db", pa.float64()),  # dB, PSNR_Y minus the GT-only twin's (search.kd_twin)
        pa.field("pareto", pa.bool_()),
        pa.field("model_uri", pa.string()),
        pa.field("start_time_ms", pa.int64()),  # Unix epoch, milliseconds
    ],
    metadata={"srcompress.trials_schema": SCHEMA_VERSION},
)


def _bool_or_none(v: object) -> bool | None:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    text = str(v).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError(f"{v!r} is not a boolean")


def _column(df: pd.DataFrame, field: pa.Field) -> pa.Array:
    n = len(df)
    if field.name not in df.columns:
        return pa.nulls(n, type=field.type)
    s = df[field.name]
    try:
        if pa.types.is_boolean(field.type):
            return pa.array([_bool_or_none(v) for v in s], type=field.type)
        if pa.types.is_integer(field.type) or pa.types.is_floating(field.type):
            num = pd.to_numeric(s, errors="raise")
            return pa.array(num, type=pa.float64(), from_pandas=True).cast(field.type, safe=True)
        values = [None if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else str(v) for v in s]
        return pa.array(values, type=field.type)
    except (ValueError, TypeError, pa.ArrowInvalid) as exc:
        raise ValueError(f"column {field.name!r} cannot be written as {field.type}: {exc}") from exc


def trials_to_arrow(df: pd.DataFrame) -> pa.Table:
    """A trials DataFrame as a ``pyarrow.Table`` with exactly ``TRIALS_SCHEMA``."""
    arrays = [_column(df, f) for f in TRIALS_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=TRIALS_SCHEMA)


def write_trials_parquet(df: pd.DataFrame, path: str | Path) -> Path:
    """Write the trials (e.g. from ``query_trials``) to ``path`` as Parquet with ``TRIALS_SCHEMA``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(trials_to_arrow(df), path)
    return path


_PANDAS_TYPES = {
    pa.int32(): pd.Int32Dtype(),
    pa.int64(): pd.Int64Dtype(),
    pa.bool_(): pd.BooleanDtype(),
    pa.string(): pd.StringDtype(),
}


def read_trials_parquet(path: str | Path) -> pd.DataFrame:
    """Read a trials table; integers and booleans come back as pandas' nullable types."""
    return pq.read_table(Path(path)).to_pandas(types_mapper=_PANDAS_TYPES.get)
