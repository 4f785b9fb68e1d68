"""Tests for adapters/terminal.py's KeyReader: single keys from a terminal (a pseudo-terminal here), the terminal given back as it was."""

from __future__ import annotations

import os
import termios
import threading
import time
from collections.abc import Iterator

import pytest

from adapters.terminal import KeyReader


@pytest.fixture
def terminal() -> Iterator[tuple[int, int]]:
    """A pseudo-terminal: (the side a user types into, the side the runner reads)."""
    typed, read = os.openpty()
    yield typed, read
    os.close(typed)
    os.close(read)


class Keys:
    """The keys handed to the callback, in order, with a way to wait for them (they come from the reader's thread)."""

    def __init__(self) -> None:
        self.got: list[str] = []
        self.changed = threading.Condition()

    def __call__(self, key: str) -> None:
        with self.changed:
            self.got.append(key)
            self.changed.notify_all()

    def wait_for(self, count: int) -> list[str]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.got) >= count, timeout=5), self.got
            return list(self.got)


def test_keys_come_one_at_a_time_unechoed_and_the_terminal_is_given_back(terminal: tuple[int, int]):
    typed, read = terminal
    before = termios.tcgetattr(read)
    reader, keys = KeyReader(read), Keys()

    assert reader.start(keys)
    lflag = termios.tcgetattr(read)[3]
    assert not lflag & termios.ICANON and not lflag & termios.ECHO, "each key at once, not echoed over the view"
    assert lflag & termios.ISIG, "Ctrl-C still interrupts"

    os.write(typed, b"\t2")  # no Enter: cbreak hands each key over as it comes
    assert keys.wait_for(2) == ["\t", "2"]
    os.write(typed, b"\x1b[1;5A")  # Ctrl-Up: its digits are no keys of ours
    os.write(typed, b"0")
    assert keys.wait_for(3) == ["\t", "2", "0"]

    reader.stop()
    assert termios.tcgetattr(read) == before
    os.write(typed, b"1\n")
    time.sleep(0.3)
    assert keys.got == ["\t", "2", "0"], "no key is taken once stopped: it is for whoever reads next (the review prompt)"
    assert os.read(read, 16) == b"1\n"


def test_a_reader_starts_again_after_a_pause_and_stopping_twice_is_harmless(terminal: tuple[int, int]):
    typed, read = terminal
    before = termios.tcgetattr(read)
    reader, keys = KeyReader(read), Keys()

    assert reader.start(keys)
    reader.stop()
    reader.stop()
    assert termios.tcgetattr(read) == before
    assert reader.start(keys)
    os.write(typed, b"\t")
    assert keys.wait_for(1) == ["\t"]
    reader.stop()
    assert termios.tcgetattr(read) == before


def test_no_keys_are_read_from_what_is_no_terminal():
    pipe_read, pipe_write = os.pipe()
    try:
        reader = KeyReader(pipe_read)
        assert not reader.start(Keys())
        reader.stop()  # harmless
    finally:
        os.close(pipe_read)
        os.close(pipe_write)


def test_the_reader_ends_by_itself_when_the_terminal_goes_away():
    typed, read = os.openpty()
    try:
        reader = KeyReader(read)
        assert reader.start(Keys())
        thread = reader.thread
        assert thread is not None

        os.close(typed)  # the user's side hangs up: the read side sees the end (EIO)
        thread.join(timeout=5)

        assert not thread.is_alive()
        reader.stop()
    finally:
        os.close(read)
