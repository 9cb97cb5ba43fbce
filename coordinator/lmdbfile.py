"""Refuse a damaged LMDB data file before it is mapped.

LMDB maps its data file and trusts it: a file truncated below the size its meta page
records makes the first read past the end a SIGBUS (the process dies with no message),
and an empty file is silently initialised as a new, empty environment (a node would
come back with no term, no vote and no log). ``check_data_file`` reads the two meta
pages itself and names the file and the problem instead. A missing file is fine: that
is a new environment, and whether one may be created is the caller's decision.

Meta page layout (lmdb.h, 64-bit builds): a 16-byte page header, then ``mm_magic``,
``mm_version`` (u32 each), ``mm_address``, ``mm_mapsize`` (u64 each), two ``MDB_db``
records of 48 bytes (the first one's ``md_pad`` holds the page size), ``mm_last_pg`` and
``mm_txnid`` (u64 each). The meta with the higher txnid is the current one.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

__all__ = ["DamagedFile", "check_data_file"]

MAGIC = 0xBEEFC0DE
_HEADER_BYTES = 16
_DB_BYTES = 48


class DamagedFile(Exception):
    """The file exists but is not a whole LMDB data file."""


def _meta(raw: bytes, offset: int) -> tuple[int, int, int] | None:
    """(page size, last page, txnid) of the meta page at ``offset``, or None."""
    base = offset + _HEADER_BYTES
    if len(raw) < base + 24 + 2 * _DB_BYTES + 16:
        return None
    magic, _version = struct.unpack_from("<II", raw, base)
    if magic != MAGIC:
        return None
    (page_bytes,) = struct.unpack_from("<I", raw, base + 24)
    last_page, txnid = struct.unpack_from("<QQ", raw, base + 24 + 2 * _DB_BYTES)
    return page_bytes, last_page, txnid


def check_data_file(path: str | os.PathLike[str]) -> None:
    """Raise ``DamagedFile`` (naming ``path``) unless it is absent or a whole LMDB data
    file: two readable meta pages, and at least as long as the current one says."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size == 0:
        raise DamagedFile(f"{path} is empty (0 bytes): damaged or truncated, not a new store")
    with path.open("rb") as data:
        first = data.read(4096)
        found = _meta(first, 0)
        page_bytes = found[0] if found is not None else 4096
        data.seek(page_bytes)
        second = data.read(page_bytes)
    metas = [m for m in (found, _meta(second, 0)) if m is not None]
    if not metas:
        raise DamagedFile(f"{path} has no valid LMDB meta page: not an LMDB file, or damaged")
    page_bytes, last_page, _ = max(metas, key=lambda m: m[2])
    if page_bytes < 512 or page_bytes & (page_bytes - 1):
        raise DamagedFile(f"{path}: meta page records page size {page_bytes}: damaged")
    needed = (last_page + 1) * page_bytes
    if size < needed:
        raise DamagedFile(
            f"{path} is truncated: {size} bytes, its meta page says {needed} are in use"
        )
