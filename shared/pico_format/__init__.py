"""pico-format: the run-directory contract between pico-train and pico-analyze."""

from pico_format.benchmarks import benchmark_rows, read_benchmarks, write_benchmarks
from pico_format.capture import (
    CaptureManifest,
    CaptureReader,
    capture_splits,
    load_capture,
    open_capture,
    write_capture,
)
from pico_format.layout import SCHEMA_VERSION, CheckpointPaths, RunPaths, step_dirname
from pico_format.run import (
    RunFormatError,
    RunInfo,
    checkpoint_transaction,
    clean_temporary,
    is_complete,
    latest_step,
    list_checkpoints,
    prune_states,
    read_json,
    read_run_info,
    write_json_atomic,
    write_run_info,
    write_text_atomic,
)

__all__ = [
    "benchmark_rows",
    "read_benchmarks",
    "write_benchmarks",
    "CaptureManifest",
    "CaptureReader",
    "capture_splits",
    "write_capture",
    "load_capture",
    "open_capture",
    "SCHEMA_VERSION",
    "CheckpointPaths",
    "RunFormatError",
    "RunInfo",
    "RunPaths",
    "checkpoint_transaction",
    "clean_temporary",
    "is_complete",
    "latest_step",
    "list_checkpoints",
    "prune_states",
    "read_json",
    "read_run_info",
    "step_dirname",
    "write_json_atomic",
    "write_run_info",
    "write_text_atomic",
]
