"""A safetensors file written one tensor at a time.

When every shape and dtype is known in advance the header can be written first and each tensor
appended as soon as it exists, so a capture with positions=all never holds every module's
activations at once. The file is byte-compatible with `safetensors.safe_open`: an 8-byte
little-endian header length, a JSON header of {name: {dtype, shape, data_offsets}} padded with
spaces to a multiple of 8, then the tensors' bytes in header order.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch

_DTYPES = {
    torch.float32: "F32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.uint8: "U8",
}


class StreamingSafetensorsWriter:
    """Usage: w = StreamingSafetensorsWriter(path, {name: (shape, dtype)}); w.write(name, t)...
    w.close(). Tensors must be written in the order given."""

    def __init__(self, path: str | Path, layout: dict[str, tuple[tuple[int, ...], torch.dtype]]):
        self.path = Path(path)
        self.order = list(layout)
        self.layout = layout
        header, offset = {}, 0
        for name, (shape, dtype) in layout.items():
            if dtype not in _DTYPES:
                raise ValueError(f"Unsupported dtype {dtype} for '{name}'.")
            size = int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size()
            header[name] = {
                "dtype": _DTYPES[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + size],
            }
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self._file = open(self.path, "wb")
        self._file.write(struct.pack("<Q", len(raw)) + raw)
        self._next = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        expected = self.order[self._next] if self._next < len(self.order) else None
        if name != expected:
            raise ValueError(f"Expected tensor '{expected}' next, got '{name}'.")
        shape, dtype = self.layout[name]
        if tuple(tensor.shape) != tuple(shape) or tensor.dtype != dtype:
            raise ValueError(
                f"'{name}': declared {tuple(shape)} {dtype}, got "
                f"{tuple(tensor.shape)} {tensor.dtype}."
            )
        data = tensor.detach().cpu().contiguous()
        self._file.write(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
        self._next += 1

    def close(self) -> None:
        if self._next != len(self.order):
            self._file.close()
            raise ValueError(
                f"Only {self._next} of {len(self.order)} tensors were written to '{self.path}'."
            )
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
