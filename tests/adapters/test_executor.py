"""The executor: jobs in threads, each on devices of its own, queued when devices or workers are short, the first to end first."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from adapters import process
from adapters.executor import Executor, Job, close_executor, executor_for, listen
from adapters.process import Limits, RunCancelled, run_script


class Holder:
    """Jobs that note the devices they were given and run until released (or cancelled)."""

    def __init__(self):
        self.release = {}
        self.devices = {}
        self.spans = {}

    def job(self, number: int, devices: int = 0, seconds: float | None = None) -> Job:
        self.release[number] = threading.Event()

        def start(given: list[str], cancel: threading.Event, emit) -> str:
            self.devices[number] = given
            began = time.monotonic()
            emit({"event": "run_started", "run": number})
            deadline = began + seconds if seconds is not None else None
            while not self.release[number].is_set() and not cancel.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                time.sleep(0.005)
            self.spans[number] = (began, time.monotonic())
            return "cancelled" if cancel.is_set() else f"run {number} done"

        return Job(number=number, start=start, devices=devices)


def wait_until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_each_job_gets_devices_of_its_own_and_one_without_waits_until_one_frees():
    pool, jobs = Executor(["0", "1"]), Holder()
    for number in (1, 2, 3):
        pool.submit(jobs.job(number, devices=1))
    wait_until(lambda: 1 in jobs.devices and 2 in jobs.devices)
    time.sleep(0.05)
    assert jobs.devices == {1: ["0"], 2: ["1"]} and pool.flights[3].started is None  # run 3 waits: no GPU is shared

    jobs.release[2].set()
    assert pool.wait_first([1, 2, 3]).job.number == 2
    pool.take(2)
    wait_until(lambda: 3 in jobs.devices)
    assert jobs.devices[3] == ["1"]  # the device run 2 gave back
    for number in (1, 3):
        jobs.release[number].set()
    assert {pool.take(pool.wait_first([n]).job.number).outcome for n in (1, 3)} == {"run 1 done", "run 3 done"}


def test_two_devices_a_job_take_the_first_free_pair():
    pool, jobs = Executor(["0", "1", "2", "3"]), Holder()
    pool.submit(jobs.job(1, devices=2))
    pool.submit(jobs.job(2, devices=2))
    wait_until(lambda: len(jobs.devices) == 2)
    assert jobs.devices == {1: ["0", "1"], 2: ["2", "3"]}
    with pytest.raises(ValueError, match="needs 5 GPUs and only 4"):
        pool.submit(jobs.job(3, devices=5))
    pool.cancel([1, 2])


def test_no_more_than_the_workers_run_at_once():
    pool, jobs = Executor(slots=2), Holder()
    for number in (1, 2, 3):
        pool.submit(jobs.job(number))
    wait_until(lambda: len(jobs.devices) == 2)
    time.sleep(0.05)
    assert set(jobs.devices) == {1, 2}
    jobs.release[1].set()
    pool.take(pool.wait_first([1, 2, 3]).job.number)
    wait_until(lambda: 3 in jobs.devices)
    pool.cancel([2, 3])


def test_wait_first_returns_the_job_that_ended_first_not_the_first_submitted():
    pool, jobs = Executor(), Holder()
    pool.submit(jobs.job(1, seconds=2.0))
    pool.submit(jobs.job(2, seconds=0.05))
    ended = pool.wait_first([1, 2])
    assert ended.job.number == 2 and ended.outcome == "run 2 done" and ended.devices == []
    assert 1 in pool.in_flight() and 2 not in pool.in_flight()
    with pytest.raises(ValueError, match="has not ended"):
        pool.take(1)
    pool.cancel([1, 2])


def test_cancel_stops_running_jobs_and_drops_queued_ones():
    pool, jobs = Executor(["0"]), Holder()
    pool.submit(jobs.job(1, devices=1))
    pool.submit(jobs.job(2, devices=1))  # waits for the one GPU
    wait_until(lambda: 1 in jobs.devices)
    stopped = {flight.job.number: flight for flight in pool.cancel([1, 2])}
    assert stopped[1].outcome == "cancelled" and stopped[1].started is not None
    assert stopped[2].started is None and isinstance(stopped[2].error, RunCancelled)  # never started
    assert 2 not in jobs.devices and pool.flights == {} and pool.free == ["0"]


def test_a_job_that_raises_hands_the_error_to_the_node_that_waits():
    pool = Executor()

    def start(devices, cancel, emit):
        raise OSError("no such folder")

    pool.submit(Job(number=1, start=start))
    ended = pool.wait_first([1])
    assert isinstance(ended.error, OSError)


def test_a_number_in_flight_cannot_be_submitted_again_and_an_unknown_one_cannot_be_waited_for():
    pool, jobs = Executor(), Holder()
    pool.submit(jobs.job(1))
    with pytest.raises(ValueError, match="already in flight"):
        pool.submit(jobs.job(1))
    with pytest.raises(KeyError):
        pool.wait_first([7])
    pool.cancel([1])


def test_events_go_to_the_listener_at_once_else_wait_for_a_node_to_relay_them():
    pool, jobs = Executor(), Holder()
    pool.submit(jobs.job(1, seconds=0.01))
    pool.take(pool.wait_first([1]).job.number)
    relayed = []
    pool.relay(relayed.append)
    assert relayed == [{"event": "run_started", "run": 1}] and not pool.events

    heard = []
    pool.listen(heard.append)
    pool.submit(jobs.job(2, seconds=0.01))
    pool.take(pool.wait_first([2]).job.number)
    wait_until(lambda: heard)
    assert heard == [{"event": "run_started", "run": 2}] and not pool.events
    pool.listen(None)


def test_a_listener_that_blocks_never_holds_up_a_runs_time_limit(tmp_path):
    """A terminal that stops reading (Ctrl-S, a full pipe) blocks the listener; the run's watchdog must go on regardless."""
    pool = Executor()
    pool.listen(lambda event: time.sleep(5))

    def start(devices, cancel, emit):
        script = "import time\nfor i in range(100):\n    print(i, flush=True)\n    time.sleep(0.05)\n"
        return run_script(
            [sys.executable, "-c", script],
            cwd=tmp_path,
            log_path=tmp_path / "output.log",
            limits=Limits(timeout_s=1),
            env={"PATH": os.environ["PATH"]},
            on_output=lambda lines: emit({"event": "output", "run": 1, "lines": lines}),
            cancel=cancel,
        )

    began = time.monotonic()
    pool.submit(Job(number=1, start=start))
    result = pool.wait_first([1]).outcome
    assert result.stopped == "timeout" and time.monotonic() - began < 4
    pool.listener = None


def test_wait_first_relays_events_while_it_waits():
    pool, jobs = Executor(), Holder()
    pool.submit(jobs.job(1, seconds=0.3))
    relayed = []
    pool.wait_first([1], relay=relayed.append)
    assert relayed == [{"event": "run_started", "run": 1}]


def test_ctrl_c_ends_the_wait_with_run_cancelled(monkeypatch):
    pool = Executor()

    def start(devices, cancel, emit):
        while not process.cancel_requested():
            time.sleep(0.005)
        raise RunCancelled("run interrupted")

    pool.submit(Job(number=1, start=start))
    threading.Timer(0.05, process._cancelled.set).start()
    try:
        with pytest.raises(RunCancelled):
            pool.wait_first([1])
    finally:
        process.allow_new_runs()


def test_the_experiments_executor_is_kept_across_steps_and_closed_at_the_end(tmp_path):
    heard = []
    listen(tmp_path, heard.append)
    pool = executor_for(tmp_path, ["0", "1"], slots=2)
    assert executor_for(tmp_path, ["0", "1"], slots=2) is pool and pool.listener is not None
    jobs = Holder()
    pool.submit(jobs.job(1, devices=1))
    assert executor_for(tmp_path, ["0"], slots=1) is pool and pool.slots == 1  # devices change only once it is idle
    close_executor(tmp_path)
    listen(tmp_path, None)
    assert pool.flights == {} and executor_for(tmp_path) is not pool
    close_executor(tmp_path)
    assert {"event": "run_started", "run": 1} in heard
