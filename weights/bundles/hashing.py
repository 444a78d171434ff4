"""Content hashes of exported bundles (a single file or an ``.mlpackage`` folder).

A file hashes to the sha256 of its bytes (what ``shasum -a 256`` prints).  A folder
hashes to the sha256 of the text ``sha256sum`` would print for its regular files, sorted
by POSIX relative path: one line ``<hex digest>  <relative path>\\n`` per file.  So

    cd dit.mlpackage && find . -type f | cut -c3- | LC_ALL=C sort | xargs sha256sum | sha256sum

gives the same digest.  The Swift package implements the same rule (``BundleHash``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def bundle_files(path: str | Path) -> list[tuple[str, Path]]:
    """(relative POSIX path, absolute path) of every regular file, sorted by bytes of the path."""
    root = Path(path)
    files = [(p.relative_to(root).as_posix(), p) for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    return sorted(files, key=lambda t: t[0].encode())


def bundle_sha256(path: str | Path) -> str:
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist")
    listing = "".join(f"{file_sha256(p)}  {rel}\n" for rel, p in bundle_files(path))
    return hashlib.sha256(listing.encode()).hexdigest()


def bundle_bytes(path: str | Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist")
    return sum(p.stat().st_size for _, p in bundle_files(path))
