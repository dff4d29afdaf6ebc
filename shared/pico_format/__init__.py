"""pico-format: the run-directory contract between pico-train and pico-analyze.

Every name of the format lives here: file and folder names (:mod:`pico_format.layout`), module
names (:mod:`pico_format.modules`), the capture manifest (:mod:`pico_format.capture`) and the
safe writes and reads (:mod:`pico_format.run`).
"""

from pico_format.benchmarks import benchmark_rows, read_benchmarks, write_benchmarks
from pico_format.capture import (
    CaptureManifest,
    CaptureReader,
    capture_splits,
    load_capture,
    open_capture,
    write_capture,
)
from pico_format.layout import (
    CAPTURE_KINDS,
    CAPTURE_SPLITS,
    EVAL_SPLIT,
    POSITION_POLICIES,
    SCHEMA_VERSION,
    TRAIN_SPLIT,
    CheckpointPaths,
    RunPaths,
    step_dirname,
)
from pico_format.modules import (
    BLOCK_SUFFIXES,
    DEFAULT_CAPTURE_SUFFIXES,
    RESIDUAL,
    layer_index,
    module_name,
    parse_module_name,
    weight_name,
)
from pico_format.run import (
    RunFormatError,
    RunInfo,
    atomic_path,
    checkpoint_transaction,
    clean_temporary,
    is_complete,
    latest_step,
    list_checkpoints,
    prune_states,
    read_json,
    read_run_info,
    verify_checkpoint,
    write_bytes_atomic,
    write_json_atomic,
    write_run_info,
    write_text_atomic,
)

__all__ = [
    "BLOCK_SUFFIXES",
    "CAPTURE_KINDS",
    "CAPTURE_SPLITS",
    "DEFAULT_CAPTURE_SUFFIXES",
    "EVAL_SPLIT",
    "POSITION_POLICIES",
    "RESIDUAL",
    "SCHEMA_VERSION",
    "TRAIN_SPLIT",
    "benchmark_rows",
    "read_benchmarks",
    "write_benchmarks",
    "CaptureManifest",
    "CaptureReader",
    "CheckpointPaths",
    "RunFormatError",
    "RunInfo",
    "RunPaths",
    "atomic_path",
    "capture_splits",
    "checkpoint_transaction",
    "clean_temporary",
    "is_complete",
    "latest_step",
    "layer_index",
    "list_checkpoints",
    "load_capture",
    "module_name",
    "open_capture",
    "parse_module_name",
    "prune_states",
    "read_json",
    "read_run_info",
    "step_dirname",
    "weight_name",
    "verify_checkpoint",
    "write_bytes_atomic",
    "write_capture",
    "write_json_atomic",
    "write_run_info",
    "write_text_atomic",
]
