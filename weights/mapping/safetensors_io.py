"""Framework-free safetensors reading and writing on numpy, with bfloat16.

numpy has no bfloat16: BF16 tensors are read as float32 (exact) and written by rounding
float32 to nearest-even.  Reading is lazy (one ``mmap`` per file, a tensor is copied only
when asked for) and every header is checked against the file size, so a truncated or
corrupt file is named instead of crashing somewhere later.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from weights.core.errors import WeightsError

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items() if k != "BF16"}
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int


def bf16_to_f32(u16: np.ndarray) -> np.ndarray:
    wide = u16.astype(np.uint32)  # the one float32-sized allocation: shifted in place
    wide <<= 16
    return wide.view(np.float32)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 -> bfloat16 bits (uint16)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = u + (np.uint32(0x7FFF) + ((u >> 16) & 1))
    out = (rounded >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        out[nan] = 0x7FC0
    return out


def _whole(*values) -> bool:
    """Non-negative integers (JSON's true/false are not)."""
    return all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Parse and check a safetensors header; raise :class:`WeightsError` naming the file."""
    fix = "re-download or re-write this file."
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise WeightsError(f"{path} is truncated (no safetensors header).", fix=fix)
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or 8 + n > size:
                raise WeightsError(f"{path} is truncated or not a safetensors file "
                                   f"(header of {n} bytes in a {size}-byte file).", fix=fix)
            raw = f.read(n)
    except OSError as e:
        raise WeightsError(f"cannot read {path}: {e.strerror}.", fix=fix) from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WeightsError(f"{path} has a corrupt safetensors header.", fix=fix) from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path} has a corrupt safetensors header (not a JSON object).", fix=fix)
    base = 8 + n
    infos: dict[str, TensorInfo] = {}
    for key, v in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape, (a, b) = v["dtype"], tuple(v["shape"]), v["data_offsets"]
            if not (isinstance(dtype, str) and _whole(a, b, *shape)):
                raise TypeError
        except (KeyError, TypeError, ValueError):
            raise WeightsError(f"{path}: corrupt header entry for tensor {key!r}.", fix=fix) from None
        if dtype not in _DTYPES:
            raise WeightsError(f"{path}: tensor {key!r} has unsupported dtype {dtype}.", fix=fix)
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(_DTYPES[dtype]).itemsize
        if b - a != nbytes or a < 0:
            raise WeightsError(f"{path}: tensor {key!r} header is inconsistent "
                               f"({b - a} bytes for shape {list(shape)} {dtype}).", fix=fix)
        if base + b > size:
            raise WeightsError(f"{path} is truncated: tensor {key!r} ends at byte {base + b} "
                               f"but the file has {size}.", fix=fix)
        infos[key] = TensorInfo(dtype, shape, base + a, base + b)
    return infos


class SafetensorsFile:
    """Lazy reader of one file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tensors = read_header(self.path)
        self._mm: mmap.mmap | None = None

    def _map(self) -> mmap.mmap:
        if self._mm is None:
            with open(self.path, "rb") as f:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return self._mm

    def get(self, key: str, float32: bool = True) -> np.ndarray:
        """One tensor; floating-point ones (BF16, F16, F64) as float32 unless ``float32=False``
        (then BF16 comes back as its raw uint16 bits)."""
        info = self.tensors[key]
        mm = self._map()
        view = np.frombuffer(memoryview(mm)[info.start:info.end], dtype=_DTYPES[info.dtype]).reshape(info.shape)
        if float32 and info.dtype == "BF16":
            arr = bf16_to_f32(view)  # copies once, straight from the mapping
        elif float32 and info.dtype in ("F16", "F64"):
            arr = view.astype(np.float32)
        else:
            arr = view.copy()
        del view
        self._release(mm, info.start, info.end)
        return arr

    @staticmethod
    def _release(mm: mmap.mmap, start: int, end: int) -> None:
        """Drop the mapped pages just copied from this process's resident set (they stay in
        the page cache): reading a whole checkpoint then costs the copies only, not the
        copies plus the mapped file (peak RSS of ``python -m coreml_convert``)."""
        advise = getattr(mm, "madvise", None)
        flag = getattr(mmap, "MADV_DONTNEED", None)
        if advise is None or flag is None or end <= start:
            return
        page = mmap.PAGESIZE
        lo = start - start % page
        try:
            advise(flag, lo, end - lo)
        except (OSError, ValueError):
            pass

    def close(self):
        if self._mm is not None:
            self._mm.close()
            self._mm = None


def write_file(path: str | Path, tensors: dict[str, np.ndarray], *,
               bf16: set[str] | None = None, metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (keys in ``bf16`` stored as BF16) atomically: temp file, then rename."""
    path = Path(path)
    bf16 = bf16 or set()
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    blobs, offset = [], 0
    for key in sorted(tensors):
        arr = tensors[key]
        if key in bf16:
            data, dtype = f32_to_bf16(arr), "BF16"
        else:
            data = np.ascontiguousarray(arr)
            dtype = _NAMES[data.dtype]
        raw = data.tobytes()
        header[key] = {"dtype": dtype, "shape": list(arr.shape),
                       "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for raw in blobs:
            f.write(raw)
    os.replace(tmp, path)
