"""The executor: the runs in flight, each train.py in its own thread, on its own devices, outliving the graph's steps.

The graph loops choose → write → submit → wait → analyse one run at a time, while up to WORKERS runs train. Nodes
hand it a job and later ask for the first one to end; the threads and processes live here, never in a node. A run
that ends while the graph writes another run's code is recorded at once (its job writes result.json), so no
device waits for the slowest run of a batch: there are no batches.

Devices (GPUS, GPUS_PER_RUN) are handed out when a run starts, each to one run at a time; a job that finds too
few free, or WORKERS runs going already (a runner resumed with fewer workers than runs in flight), waits in line
instead of sharing. Events (output lines, a run starting or ending) go to the
listener the runner set, at once, or wait in a queue for the next node to relay through its stream writer
(LangGraph's writer works only inside a step).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from adapters.process import RunCancelled, cancel_requested

EVENTS_KEPT = 10_000
"""Output events held for the listener or the next node; past it new output is dropped (output.log keeps every line)."""
WAIT_SLICE_S = 0.1
"""How often a waiting node wakes to relay events and to notice Ctrl-C."""


@dataclass
class Job:
    """One run to execute: `start(devices, cancel, emit)` runs it to its end and returns its outcome (what the node needs)."""

    number: int
    start: Callable[[list[str], threading.Event, Callable[[dict], None]], object]
    """Runs train.py on the devices given (CUDA_VISIBLE_DEVICES), until it ends or `cancel` is set; returns the outcome."""
    devices: int = 0
    """How many devices it needs (GPUS_PER_RUN when there are GPUs, else 0)."""


@dataclass
class Flight:
    """A job the executor holds: waiting for devices, running, or ended with an outcome or an error."""

    job: Job
    cancel: threading.Event = field(default_factory=threading.Event)
    """Set to stop this job alone (the experiment ended while it ran)."""
    devices: list[str] = field(default_factory=list)
    """The devices it holds while it runs."""
    started: float | None = None
    """time.time() when it started; None while it waits for devices."""
    ended: float | None = None
    """time.time() when it ended; None while it waits or runs."""
    outcome: object = None
    """What its `start` returned."""
    error: BaseException | None = None
    """What its `start` raised instead (RunCancelled on Ctrl-C), for the node that takes it."""

    @property
    def done(self) -> bool:
        return self.ended is not None


class Executor:
    """Runs jobs in threads, each on its own devices, and tells which ended first."""

    def __init__(self, devices: Iterable[str] = (), slots: int = 0):
        self.devices = list(devices)
        self.free = list(self.devices)
        self.slots = slots
        """The most jobs running at once (WORKERS); 0: no limit. Past it a job waits in line, as for devices."""
        self.flights: dict[int, Flight] = {}
        self.queue: deque[int] = deque()
        """Jobs waiting for devices, first come first served."""
        self.changed = threading.Condition()
        self.events: deque[dict] = deque()
        """What the runs said and nobody has heard yet: output beyond EVENTS_KEPT is dropped, a run starting or ending never."""
        self.listener: Callable[[dict], None] | None = None
        self.pending = threading.Event()
        """Set when an event waits for the listener."""
        self.delivering: threading.Thread | None = None

    # What the nodes call.

    def submit(self, job: Job) -> None:
        """Start `job` now if its devices are free, else queue it until they are. A number already held is replaced only once it ended."""
        with self.changed:
            if (held := self.flights.get(job.number)) is not None and not held.done:
                raise ValueError(f"run {job.number} is already in flight")
            if job.devices > len(self.devices):
                raise ValueError(f"run {job.number} needs {job.devices} GPUs and only {len(self.devices)} are given (GPUS)")
            self.flights[job.number] = Flight(job)
            self.queue.append(job.number)
            self._start_queued()

    def knows(self, number: int) -> bool:
        """Whether run `number` was submitted to this executor (a resumed runner's new executor knows none of the old ones)."""
        return number in self.flights

    def wait_first(self, numbers: Iterable[int], relay: Callable[[dict], None] | None = None) -> Flight:
        """Block until one of runs `numbers` has ended, relaying queued events meanwhile; the one that ended first.

        Raises RunCancelled when the runner is stopping (Ctrl-C), once the runs have been killed.
        """
        wanted = set(numbers)
        missing = wanted - self.flights.keys()
        if missing:
            raise KeyError(f"runs {sorted(missing)} were never submitted")
        while True:
            if relay is not None:
                self.relay(relay)
            with self.changed:
                ended = [self.flights[n] for n in wanted if self.flights[n].done]
                if ended:
                    first = min(ended, key=lambda flight: (flight.ended, flight.job.number))
                    break
                if cancel_requested() and not self.queue:
                    running = [self.flights[n] for n in wanted if self.flights[n].started is not None and not self.flights[n].done]
                    if not running:
                        raise RunCancelled("stopped by the user while runs were in flight")
                self.changed.wait(WAIT_SLICE_S)
        if relay is not None:
            self.relay(relay)
        if isinstance(first.error, RunCancelled) or (cancel_requested() and first.error is not None):
            raise RunCancelled(str(first.error))
        return first

    def take(self, number: int) -> Flight:
        """Forget an ended run (its outcome was recorded); its Flight."""
        with self.changed:
            flight = self.flights[number]
            if not flight.done:
                raise ValueError(f"run {number} has not ended")
            return self.flights.pop(number)

    def cancel(self, numbers: Iterable[int]) -> list[Flight]:
        """Stop runs `numbers` (a queued one never starts) and wait until each has ended; their Flights, taken."""
        with self.changed:
            numbers = [n for n in numbers if n in self.flights]
            for number in numbers:
                flight = self.flights[number]
                flight.cancel.set()
                if flight.started is None and not flight.done:  # still waiting for devices
                    self._drop_queued(flight, "cancelled before it started")
            self.changed.notify_all()
            while not all(self.flights[n].done for n in numbers):
                self.changed.wait(WAIT_SLICE_S)
            return [self.flights.pop(n) for n in numbers]

    def in_flight(self) -> dict[int, Flight]:
        """The runs not ended yet, by number."""
        with self.changed:
            return {n: flight for n, flight in self.flights.items() if not flight.done}

    # Events.

    def emit(self, event: dict) -> None:
        """An event of a run in flight, queued: the listener's thread hands it on, else the next node relays it. Never blocks,
        so a terminal that stops reading never stops a run's watchdog (its timeout, its limits)."""
        if event.get("event") in ("output", "output_redraw") and len(self.events) >= EVENTS_KEPT:
            return  # a flood nobody reads: output.log has every line
        self.events.append(event)
        self.pending.set()

    def relay(self, writer: Callable[[dict], None]) -> None:
        """Pass the queued events on through `writer` (a node's stream writer), unless a listener hears them."""
        if self.listener is not None:
            return
        self._hand_on(writer)

    def listen(self, listener: Callable[[dict], None] | None) -> None:
        """Deliver events to `listener` as they happen, from a thread of the executor's own (None: queue them again)."""
        with self.changed:
            previous, self.listener = self.listener, listener
            if listener is not None and (self.delivering is None or not self.delivering.is_alive()):
                self.delivering = threading.Thread(target=self._deliver, name="run-events", daemon=True)
                self.delivering.start()
        self.pending.set()
        if listener is None and previous is not None:  # what is still queued reaches the one that listened until now
            self._hand_on(previous)

    def _deliver(self) -> None:
        while (listener := self.listener) is not None:
            self.pending.wait(WAIT_SLICE_S)
            self.pending.clear()
            self._hand_on(listener)

    def _hand_on(self, writer: Callable[[dict], None]) -> None:
        while True:
            try:
                event = self.events.popleft()
            except IndexError:
                return
            try:
                writer(event)
            except Exception:  # a view's failure must not end the delivery of the other runs' events
                pass

    # Inside.

    def _start_queued(self) -> None:
        """Start the queued jobs whose devices are free, in order (called holding self.changed); none once the runner is stopping."""
        while self.queue:
            flight = self.flights[self.queue[0]]
            if cancel_requested():
                self._drop_queued(flight, "interrupted before it started")
                continue
            running = sum(1 for other in self.flights.values() if other.started is not None and not other.done)
            if flight.job.devices > len(self.free) or (self.slots and running >= self.slots):
                return
            self.queue.popleft()
            flight.devices, self.free = self.free[: flight.job.devices], self.free[flight.job.devices :]
            flight.started = time.time()
            threading.Thread(target=self._run, args=(flight,), name=f"run-{flight.job.number}", daemon=True).start()

    def _drop_queued(self, flight: Flight, why: str) -> None:
        """A queued job that will never start: ended, as cancelled (called holding self.changed)."""
        self.queue.remove(flight.job.number)
        flight.ended = time.time()
        flight.error = RunCancelled(why)

    def _run(self, flight: Flight) -> None:
        try:
            flight.outcome = flight.job.start(list(flight.devices), flight.cancel, self.emit)
        except BaseException as exc:  # the node that waits for it raises it
            flight.error = exc
        with self.changed:
            flight.ended = time.time()
            self.free += [device for device in flight.devices if device in self.devices]
            self.free.sort(key=self.devices.index)
            self._start_queued()
            self.changed.notify_all()


_EXECUTORS: dict[Path, Executor] = {}
_LISTENERS: dict[Path, Callable[[dict], None]] = {}
_EXECUTORS_LOCK = threading.Lock()


def executor_for(root: Path, devices: Iterable[str] = (), slots: int = 0) -> Executor:
    """The executor of the experiment in `root`, made on first use; with other devices than it has, a new one once it is
    idle. `slots` (WORKERS) is taken as given: a runner resumed with fewer workers than runs in flight starts them in turn."""
    devices = list(devices)
    with _EXECUTORS_LOCK:
        current = _EXECUTORS.get(root)
        if current is None or (current.devices != devices and not current.in_flight()):
            current = _EXECUTORS[root] = Executor(devices, slots)
            current.listen(_LISTENERS.get(root))
        with current.changed:
            if current.slots != slots:
                current.slots = slots
                current._start_queued()
        return current


def listen(root: Path, listener: Callable[[dict], None] | None) -> None:
    """Deliver the events of the experiment's runs in flight to `listener` as they happen (the runner's view); None: stop."""
    with _EXECUTORS_LOCK:
        if listener is None:
            _LISTENERS.pop(root, None)
        else:
            _LISTENERS[root] = listener
        current = _EXECUTORS.get(root)
    if current is not None:
        current.listen(listener)


def existing_executor(root: Path) -> Executor | None:
    """The experiment's executor if this process made one."""
    with _EXECUTORS_LOCK:
        return _EXECUTORS.get(root)


def close_executor(root: Path) -> None:
    """Stop whatever still runs for the experiment in `root` and forget its executor (the runner is done with the folder)."""
    with _EXECUTORS_LOCK:
        executor = _EXECUTORS.pop(root, None)
    if executor is not None:
        executor.cancel(list(executor.flights))
