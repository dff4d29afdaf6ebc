"""Cost of the checkpoint integrity records (sizes + CRC-32 in checkpoint.json).

    python benchmarks/bench_integrity.py            # files of 64 MiB (full CRC) and 2 GiB (sampled)

Writes random files into a temporary checkpoint folder, then times `file_records` (what
checkpoint_transaction adds to every checkpoint write: a stat and a CRC-32 per file, read back
from the page cache) and `verify_checkpoint` (what a resume reads back). Files up to
FULL_CRC_BYTES get a full CRC-32; larger ones (the 1b preset's model and optimizer files) only
their first and last SAMPLE_BYTES, with the exact size.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from pico_format import CheckpointPaths, RunPaths, checkpoint_transaction, verify_checkpoint
from pico_format.integrity import FULL_CRC_BYTES, SAMPLE_BYTES, file_records


def _write(path: Path, size: int) -> None:
    block = os.urandom(1 << 24)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            f.write(block[: min(left, len(block))])
            left -= len(block)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small-mib", type=int, default=64)
    parser.add_argument("--large-mib", type=int, default=2048)
    args = parser.parse_args()
    print(f"full CRC-32 up to {FULL_CRC_BYTES >> 20} MiB, else first/last {SAMPLE_BYTES >> 20} MiB")
    with tempfile.TemporaryDirectory() as tmp:
        for mib in (args.small_mib, args.large_mib):
            folder = Path(tmp) / f"f{mib}"
            folder.mkdir()
            _write(CheckpointPaths(folder).model_weights, mib << 20)
            began = time.perf_counter()
            file_records(folder)
            took = time.perf_counter() - began
            print(
                f"file_records, one {mib} MiB file: {took * 1000:.1f} ms ({mib / took:,.0f} MiB/s)"
            )
        run = RunPaths(Path(tmp) / "run")
        with checkpoint_transaction(run, 1) as ckpt:
            _write(ckpt.model_weights, args.large_mib << 20)
            _write(ckpt.root / "small.bin", args.small_mib << 20)
        began = time.perf_counter()
        assert verify_checkpoint(run.checkpoint(1)) is None
        took = time.perf_counter() - began
        print(f"verify_checkpoint ({args.large_mib} + {args.small_mib} MiB): {took * 1000:.1f} ms")


if __name__ == "__main__":
    main()
