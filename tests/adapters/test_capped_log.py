"""Tests for adapters/capped_log.py: exact under the cap; over it, head, marker and tail within the bound."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from adapters.capped_log import MARKER, CappedLog

MARKER_LINE = re.compile(re.escape(MARKER.encode()).replace(re.escape(b"{dropped}"), rb"(\d+)"))


def numbered_lines(count: int, width: int = 40) -> bytes:
    """`count` distinct lines of `width` bytes each, newline included, so that any cut shows where it fell."""
    return b"".join(f"line {i:08d} ".ljust(width - 1, "x").encode() + b"\n" for i in range(count))


def write_all(path: Path, max_bytes: int, data: bytes, chunk: int | None = None) -> CappedLog:
    """Write `data` in pieces of `chunk` bytes (one piece if None) and close."""
    step = chunk or max(len(data), 1)
    with CappedLog(path, max_bytes) as log:
        for start in range(0, len(data), step):
            log.write(data[start : start + step])
    return log


def split_at_marker(content: bytes, written: int) -> tuple[bytes, int, bytes]:
    """Head, dropped byte count, tail of a capped log of `written` bytes; fails unless there is exactly one marker."""
    markers = list(MARKER_LINE.finditer(content))
    assert len(markers) == 1, content[:200]
    marker = markers[0]
    dropped, tail = int(marker.group(1)), content[marker.end() :]
    head = content[: written - dropped - len(tail)]
    assert content[len(head) : marker.start()] == (b"" if head.endswith(b"\n") else b"\n")  # the marker starts a line
    return head, dropped, tail


def marker_bytes(dropped: int) -> int:
    return len(("\n" + MARKER.format(dropped=dropped)).encode())


def assert_capped(path: Path, data: bytes, max_bytes: int) -> tuple[bytes, bytes]:
    """The log at `path` keeps a head and a tail of `data` and says exactly how much lies between them."""
    content = path.read_bytes()
    head, dropped, tail = split_at_marker(content, len(data))
    assert data.startswith(head) and data.endswith(tail)
    assert len(head) + dropped + len(tail) == len(data)
    assert len(head) + len(tail) <= max_bytes
    assert len(content) <= max_bytes + marker_bytes(dropped)
    assert len(tail) >= max_bytes // 4 - max_bytes // 16  # at least a quarter, less the line-search window
    assert not list(path.parent.glob(".*tail*")), "segment files left behind"
    return head, tail


def test_under_the_cap_the_log_is_exactly_what_was_written(tmp_path: Path):
    data = numbered_lines(100)
    log = write_all(tmp_path / "output.log", max_bytes=len(data), data=data, chunk=7)

    assert (tmp_path / "output.log").read_bytes() == data
    assert (log.written, log.dropped) == (len(data), 0)
    assert [p.name for p in tmp_path.iterdir()] == ["output.log"]


@pytest.mark.parametrize("chunk", [1, 13, 4000])
def test_nothing_is_dropped_before_the_cap_is_reached(tmp_path: Path, chunk: int):
    data = numbered_lines(100)
    for size in (len(data) * 3 // 4, len(data) - 1, len(data)):
        log = write_all(tmp_path / "output.log", max_bytes=len(data), data=data[:size], chunk=chunk)
        assert (tmp_path / "output.log").read_bytes() == data[:size]
        assert log.dropped == 0

    log = write_all(tmp_path / "output.log", max_bytes=len(data) - 1, data=data, chunk=chunk)
    assert log.dropped > 0


def test_over_the_cap_keeps_head_and_tail_and_counts_the_bytes_between(tmp_path: Path):
    data = numbered_lines(10_000)
    log = write_all(tmp_path / "output.log", max_bytes=40_000, data=data, chunk=1000)

    head, tail = assert_capped(tmp_path / "output.log", data, 40_000)
    assert log.written == len(data)
    assert log.dropped == len(data) - len(head) - len(tail)
    assert tail.endswith(b"line 00009999 " + b"x" * 25 + b"\n")


def test_one_huge_write_and_many_small_ones_give_the_same_file(tmp_path: Path):
    data = numbered_lines(300_000, width=37)  # 11 MB
    write_all(tmp_path / "one.log", max_bytes=1_000_000, data=data)
    write_all(tmp_path / "many.log", max_bytes=1_000_000, data=data, chunk=4096 + 17)

    assert (tmp_path / "one.log").read_bytes() == (tmp_path / "many.log").read_bytes()
    assert_capped(tmp_path / "one.log", data, 1_000_000)


def test_the_marker_sits_between_whole_lines(tmp_path: Path):
    data = numbered_lines(10_000)
    write_all(tmp_path / "output.log", max_bytes=40_000, data=data, chunk=999)

    head, tail = assert_capped(tmp_path / "output.log", data, 40_000)
    assert head.endswith(b"\n")
    assert re.fullmatch(rb"(line \d{8} x+\n)+", tail)


def test_without_newlines_the_cut_falls_at_the_limit_and_the_marker_starts_its_own_line(tmp_path: Path):
    data = bytes(random.Random(2).choices(b"abcdef", k=100_000))
    write_all(tmp_path / "output.log", max_bytes=10_000, data=data, chunk=333)

    content = (tmp_path / "output.log").read_bytes()
    head, tail = assert_capped(tmp_path / "output.log", data, 10_000)
    assert len(head) == 5_000
    assert content[5_000:5_001] == b"\n"


def test_a_tiny_cap_still_holds(tmp_path: Path):
    data = numbered_lines(100)
    for max_bytes in (1, 2, 3, 10):
        path = tmp_path / f"{max_bytes}.log"
        log = write_all(path, max_bytes=max_bytes, data=data, chunk=5)
        assert len(path.read_bytes()) <= max_bytes + marker_bytes(log.dropped)
        assert MARKER_LINE.search(path.read_bytes())


def test_no_cap_is_a_plain_file(tmp_path: Path):
    data = numbered_lines(10_000)
    log = write_all(tmp_path / "output.log", max_bytes=0, data=data, chunk=1000)

    assert (tmp_path / "output.log").read_bytes() == data
    assert (log.written, log.dropped) == (len(data), 0)


def test_the_head_is_on_disk_while_the_run_goes_on(tmp_path: Path):
    with CappedLog(tmp_path / "output.log", 1_000) as log:
        log.write(b"epoch 1\n")
        log.flush()
        assert (tmp_path / "output.log").read_bytes() == b"epoch 1\n"


def test_close_twice_and_write_after_close(tmp_path: Path):
    data = numbered_lines(1_000)
    log = CappedLog(tmp_path / "output.log", 4_000)
    log.write(data)
    log.close()
    once = (tmp_path / "output.log").read_bytes()
    log.close()

    assert (tmp_path / "output.log").read_bytes() == once
    with pytest.raises(ValueError):
        log.write(b"late\n")


def test_an_exception_inside_with_still_finishes_the_log(tmp_path: Path):
    data = numbered_lines(10_000)
    with pytest.raises(RuntimeError), CappedLog(tmp_path / "output.log", 40_000) as log:
        log.write(data)
        raise RuntimeError("the runner crashed")

    assert_capped(tmp_path / "output.log", data, 40_000)


@pytest.mark.parametrize("seed", range(20))
def test_any_output_any_writes_any_cap(tmp_path: Path, seed: int):
    rng = random.Random(seed)
    data = b"".join(b"y" * rng.choice([0, 1, 5, 80, 3000]) + b"\n" * rng.choice([0, 1, 1, 1, 2]) for _ in range(rng.randrange(1, 300)))
    max_bytes = rng.choice([1, 7, 100, 1000, len(data) - 1, len(data), len(data) + 1, 10 * len(data)])
    with CappedLog(tmp_path / "output.log", max_bytes) as log:
        pos = 0
        while pos < len(data):
            step = rng.choice([7, 300, 5000, 100_000])
            log.write(data[pos : pos + step])
            pos += step
            log.flush()
            on_disk = sum(p.stat().st_size for p in tmp_path.iterdir())
            assert on_disk <= max(max_bytes, 1), "the log and its segments together stay within the cap"
    write_all(tmp_path / "one.log", max_bytes, data)

    assert (tmp_path / "output.log").read_bytes() == (tmp_path / "one.log").read_bytes()
    if len(data) <= max_bytes:
        assert (tmp_path / "output.log").read_bytes() == data
    elif max_bytes >= 1000:
        assert_capped(tmp_path / "output.log", data, max_bytes)
    else:
        assert MARKER_LINE.search((tmp_path / "output.log").read_bytes())
    assert log.written == len(data)
