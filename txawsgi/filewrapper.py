"""
C{wsgi.file_wrapper}: a file streamed in blocks as the transport drains.
"""

from __future__ import annotations

from typing import IO

#: Smallest block read at a time; smaller hints cost a step per few KiB.
MIN_BLOCK = 64 * 1024


class FileWrapper:
    """
    Iterate a file-like object in blocks, closing it at the end (PEP 3333).

    The engine pulls one block per step and stops pulling while the client
    is slow, so the file is never held in memory whole.

    @param blksize: the block size hint; at least L{MIN_BLOCK} is read.
    """

    __slots__ = ("filelike", "blksize")

    def __init__(self, filelike: IO[bytes], blksize: int = 8192) -> None:
        self.filelike = filelike
        self.blksize = max(int(blksize), MIN_BLOCK)

    def __iter__(self) -> "FileWrapper":
        return self

    def __next__(self) -> bytes:
        data = self.filelike.read(self.blksize)
        if data:
            return data
        raise StopIteration

    def close(self) -> None:
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()
