"""CappedLog: a log file with a size cap that keeps the head and a rolling tail, in bounded memory."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import BinaryIO

LINE_SEARCH_BYTES = 64 * 1024
"""How far from a cut a newline is looked for, so that the dropped-bytes line sits between whole lines."""
COPY_BUFFER_BYTES = 1024 * 1024
NEWLINE = ord("\n")
MARKER = "[runner] … {dropped} bytes dropped here (output.log is capped by LOG_MAX_MB) …\n"


class CappedLog:
    """output.log with a size cap: the head as written, then a rolling tail, in bounded memory.

    The first half of `max_bytes` goes straight into `path`, so whoever reads the log during the run sees
    its start at once. The rest of the budget is shared by two hidden segment files beside it, used in
    turn: when the current one is full the other is emptied and written next, so the last quarter to half
    of the output is always on disk. close() appends to `path` a line saying how many bytes were dropped,
    then the older and the newer segment, and deletes both. Nothing is dropped before `max_bytes` have
    been written, and how the output is split into writes changes nothing.

    The marker sits between whole lines where a newline is near: the head ends at the first newline
    within LINE_SEARCH_BYTES of its limit, and the kept tail starts after the first newline within
    LINE_SEARCH_BYTES of its start (those bytes count as dropped).
    """

    dropped: int
    """Bytes not kept."""
    written: int
    """Bytes received in total."""

    def __init__(self, path: Path, max_bytes: int):
        """`max_bytes` 0 means no cap: a plain file."""
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be 0 (no cap) or more, not {max_bytes}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.dropped = 0
        self.written = 0
        self._head_file: BinaryIO = open(self.path, "wb")
        self._head_limit = max_bytes // 2
        self._head_size = 0
        self._head_ends_line = True
        self._in_tail = False
        self._ends_line = True
        """Whether the last byte received was a newline."""
        self._segment_paths = [self.path.with_name(f".{self.path.name}.tail{i}") for i in (0, 1)]
        self._segment_files: list[BinaryIO] = []
        self._segment_limits = [0, 0]
        self._segment_sizes = [0, 0]
        self._segment_starts_line = [True, True]
        self._current = 0
        self._closed = False
        self._lock = threading.Lock()  # a pump thread may still write while another thread closes

    def write(self, data: bytes) -> None:
        """Keep what fits in the head or the tail; count the rest in `dropped`."""
        with self._lock:
            if self._closed:
                raise ValueError(f"write to closed log {self.path}")
            self.written += len(data)
            if not self.max_bytes:
                self._head_file.write(data)
                return
            view, pos = memoryview(data), 0
            while pos < len(data):
                if not self._in_tail:
                    taken, full = _head_part(data, pos, self._head_size, self._head_limit)
                    self._head_file.write(view[pos : pos + taken])
                    self._head_size += taken
                    if taken:
                        self._head_ends_line = data[pos + taken - 1] == NEWLINE
                    if full:
                        self._start_tail()
                elif not self._segment_limits[1]:  # a cap of a few bytes leaves no room for a tail
                    taken = len(data) - pos
                    self.dropped += taken
                else:
                    if self._segment_sizes[self._current] == self._segment_limits[self._current]:
                        self._switch_segment()
                    taken = min(len(data) - pos, self._segment_limits[self._current] - self._segment_sizes[self._current])
                    self._segment(self._current).write(view[pos : pos + taken])
                    self._segment_sizes[self._current] += taken
                if taken:
                    self._ends_line = data[pos + taken - 1] == NEWLINE
                pos += taken

    def flush(self) -> None:
        """Put what the head holds on disk for readers of `path`; the hidden segments wait for close()."""
        with self._lock:
            if not self._closed:
                self._head_file.flush()

    def close(self) -> None:
        """Finish `path`: the head, the dropped-bytes line when bytes were dropped, the tail. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                older, newer = 1 - self._current, self._current
                skip = self._partial_first_line(older) if self.dropped else 0
                self.dropped += skip
                if self.dropped:
                    self._head_file.write(b"" if self._head_ends_line else b"\n")
                    self._head_file.write(MARKER.format(dropped=self.dropped).encode())
                if self._segment_files:
                    self._copy_segment(older, start=skip)
                    self._copy_segment(newer, start=0)
            finally:
                self._head_file.close()
                for segment in self._segment_files:
                    segment.close()
                for segment_path in self._segment_paths:
                    segment_path.unlink(missing_ok=True)

    def __enter__(self) -> CappedLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _start_tail(self) -> None:
        """The head is full: what it left of the budget goes to the two segments, half each."""
        self._in_tail = True
        budget = self.max_bytes - self._head_size
        self._segment_limits = [budget - budget // 2, budget // 2]

    def _segment(self, index: int) -> BinaryIO:
        """The segment file `index`, both created on first use, so that a short output leaves no hidden file."""
        if not self._segment_files:
            self._segment_files = [open(p, "w+b") for p in self._segment_paths]
        return self._segment_files[index]

    def _switch_segment(self) -> None:
        """Empty the older segment, dropping its bytes, and write to it from now on."""
        self._current = 1 - self._current
        self.dropped += self._segment_sizes[self._current]
        segment = self._segment(self._current)
        segment.seek(0)
        segment.truncate()
        self._segment_sizes[self._current] = 0
        self._segment_starts_line[self._current] = self._ends_line

    def _copy_segment(self, index: int, start: int) -> None:
        segment = self._segment_files[index]
        segment.flush()
        segment.seek(start)
        shutil.copyfileobj(segment, self._head_file, COPY_BUFFER_BYTES)

    def _partial_first_line(self, index: int) -> int:
        """How many bytes at the start of segment `index` finish a line whose start was dropped: 0 if none or no newline near."""
        if self._segment_starts_line[index] or not self._segment_files:
            return 0
        segment = self._segment_files[index]
        segment.flush()
        segment.seek(0)
        newline = segment.read(min(LINE_SEARCH_BYTES, self._segment_limits[index] // 4)).find(b"\n")
        return newline + 1 if newline >= 0 else 0


def _head_part(data: bytes, pos: int, size: int, limit: int) -> tuple[int, bool]:
    """How many bytes of `data[pos:]` go into a head holding `size` of its `limit` bytes, and whether it is then full.

    The head is full at `limit`, or earlier at the first newline within LINE_SEARCH_BYTES of it.
    """
    room = limit - size
    end = min(len(data), pos + room)
    search_from = pos + max(0, room - min(LINE_SEARCH_BYTES, limit // 4))
    if search_from < end and (newline := data.find(b"\n", search_from, end)) >= 0:
        return newline + 1 - pos, True
    return end - pos, end - pos == room
