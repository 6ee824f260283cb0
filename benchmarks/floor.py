"""The floor under taskswarm: a bare application → master → slave → worker chain, no framework.

Run it as ``python benchmarks/floor.py`` (``--help`` lists the options). It forks a *master* and a
*slave* process joined by ZeroMQ over Unix sockets, the slave forks two workers fed through pipes,
and this process plays the application. There is no scheduling, no journal, no header and no
bookkeeping: each hop receives, checks the MAC, sends on. What it measures is the least any
framework with this shape pays on this machine, next to ``multiprocessing.Pool`` in the same run:

* **latency**: sequential round trips of a small pickled task → p50 / p99 ms;
* **bigarg**: 1 MiB bytes arguments, 8 in flight, each worker returning the length → MiB/s, under
  three ways of authenticating the bytes:

  - ``per-hop``: HMAC-SHA256 over every frame on every hop; the master verifies what it receives
    and signs what it sends (what DESIGN.md asks of every message);
  - ``end-to-end``: the application's MAC travels unchanged and only the slave checks it, so each
    byte is hashed twice instead of four times;
  - ``none``: no MAC at all (what ``multiprocessing.Pool`` does).

* **cpu**: 200 calls of ~20 ms of pure Python, serially here, then split between two forked
  processes that share nothing and never speak → the efficiency (speedup / 2) this machine's two
  CPUs give at best.

These figures are why the latency and bigarg targets of benchmarks/README.md are out of reach
here: see "The floor" there. Nothing is asserted; Linux only (Unix sockets, ``fork``).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import multiprocessing
import os
import pickle
import shutil
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq

KEY = os.urandom(32)
MIB = 1 << 20
MODES = ("per-hop", "end-to-end", "none")


def mac(mode: str, *frames: Any) -> bytes:
    if mode == "none":
        return b""
    digest = hmac.new(KEY, digestmod=hashlib.sha256)
    for frame in frames:
        digest.update(frame)
    return digest.digest()


def check(mode: str, signature: Any, frame: Any) -> None:
    if mode != "none" and not hmac.compare_digest(bytes(signature), mac(mode, frame)):
        raise SystemExit("bad MAC")


def master(address: str, mode: str) -> None:
    """Forwards between the application (front) and the slave (back)."""
    context = zmq.Context()
    front = context.socket(zmq.ROUTER)
    front.bind(address + "/master")
    back = context.socket(zmq.ROUTER)
    back.bind(address + "/slave")
    poller = zmq.Poller()
    poller.register(front, zmq.POLLIN)
    poller.register(back, zmq.POLLIN)
    slave_id = app_id = b""
    while True:
        for socket, _ in poller.poll():
            ident, signature, frame = socket.recv_multipart(copy=False)
            if socket is back and not slave_id:
                slave_id = ident.bytes
                continue
            if socket is front:
                app_id = ident.bytes
            if mode == "per-hop":
                check(mode, signature.buffer, frame.buffer)
                signature = mac(mode, frame.buffer)
            target, to = (front, app_id) if socket is back else (back, slave_id)
            target.send_multipart([to, signature, frame], copy=False)


def worker(tasks: int, results: int) -> None:
    with os.fdopen(tasks, "rb", buffering=0) as source:
        while header := source.read(4):
            size = int.from_bytes(header, "little")
            buffer = bytearray(size)
            view, got = memoryview(buffer), 0
            while got < size:
                got += source.readinto(view[got:])
            task = pickle.loads(buffer)
            answer = pickle.dumps(len(task) if isinstance(task, bytes) else task)
            os.write(results, len(answer).to_bytes(4, "little") + answer)
    os._exit(0)


def write_all(fd: int, header: bytes, payload: memoryview) -> None:
    os.write(fd, header)
    while payload:
        payload = payload[os.write(fd, payload) :]


def slave(address: str, mode: str, workers: int = 2) -> None:
    """Checks each task's MAC, keeps each worker at most two tasks deep, signs each result."""
    pipes: list[tuple[int, int]] = []
    for _ in range(workers):
        to_worker, from_slave = os.pipe()
        to_slave, from_worker = os.pipe()
        if os.fork() == 0:
            for fd in (from_slave, to_slave, *(fd for pair in pipes for fd in pair)):
                os.close(fd)  # so the worker sees end-of-file once the slave is gone
            worker(to_worker, from_worker)
        os.close(to_worker)
        os.close(from_worker)
        pipes.append((from_slave, to_slave))
    socket = zmq.Context().socket(zmq.DEALER)
    socket.connect(address + "/slave")
    socket.send_multipart([b"", b"hello"])
    poller = zmq.Poller()
    poller.register(socket, zmq.POLLIN)
    for _, to_slave in pipes:
        poller.register(to_slave, zmq.POLLIN)
    queue: deque[memoryview] = deque()
    load = [0] * workers
    while True:
        for ready, _ in poller.poll():
            if ready is socket:
                signature, frame = socket.recv_multipart(copy=False)
                check(mode, signature.buffer, frame.buffer)
                queue.append(frame.buffer)
                continue
            index = [fd for _, fd in pipes].index(ready)
            answer = os.read(ready, int.from_bytes(os.read(ready, 4), "little"))
            load[index] -= 1
            socket.send_multipart([mac(mode, answer), answer])
        for index, (to_worker, _) in enumerate(pipes):
            while load[index] < 2 and queue:
                payload = queue.popleft()
                load[index] += 1
                write_all(to_worker, len(payload).to_bytes(4, "little"), payload)


class Chain:
    """The two forked node processes and the application's socket, gone on exit however it ends."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.directory = tempfile.mkdtemp(prefix="taskswarm-floor-")
        address = "ipc://" + self.directory
        context = multiprocessing.get_context("fork")
        self.processes = [
            context.Process(target=master, args=(address, mode), daemon=True),
            context.Process(target=slave, args=(address, mode), daemon=True),
        ]
        for process in self.processes:
            process.start()
        self.socket = zmq.Context.instance().socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(address + "/master")

    def __enter__(self) -> Chain:
        self.call(0)  # the slave has said hello once its first answer can come back
        return self

    def __exit__(self, *exc: object) -> None:
        self.socket.close()
        for process in self.processes:
            process.kill()
            process.join()
        shutil.rmtree(self.directory, ignore_errors=True)

    def send(self, argument: Any) -> None:
        payload = pickle.dumps(argument, protocol=5)
        self.socket.send_multipart([mac(self.mode, payload), payload], copy=False)

    def receive(self) -> Any:
        signature, payload = self.socket.recv_multipart(copy=False)
        check(self.mode, signature.buffer, payload.buffer)
        return pickle.loads(payload.buffer)

    def call(self, argument: Any) -> Any:
        """The first round trip: the master drops what comes before the slave's hello."""
        while not self.socket.poll(250):
            self.send(argument)
        answer = self.receive()
        while self.socket.poll(100):
            self.receive()
        return answer

    def round_trip(self, argument: Any) -> Any:
        self.send(argument)
        return self.receive()

    def bulk(self, blobs: list[bytes], window: int = 8) -> int:
        sent = received = 0
        while received < len(blobs):
            while sent < len(blobs) and sent - received < window:
                self.send(blobs[sent])
                sent += 1
            received += self.receive() == len(blobs[0])
        return received


def latency(round_trip: Callable[[Any], Any], count: int) -> tuple[float, float]:
    samples = []
    for i in range(count):
        start = time.perf_counter()
        round_trip(("task", i))
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return samples[len(samples) // 2], samples[int(len(samples) * 0.99)]


def rate(bulk: Callable[[list[bytes]], Any], blobs: list[bytes]) -> float:
    start = time.perf_counter()
    bulk(blobs)
    return len(blobs) / (time.perf_counter() - start)


def spin(count: int) -> int:
    total = 0
    for i in range(count):
        total += i * i % 7
    return total


def calibrate(call_s: float = 0.020) -> int:
    start = time.perf_counter()
    spin(200_000)
    return int(200_000 * call_s / (time.perf_counter() - start))


def cpu_efficiency(count: int, calls: int = 200, processes: int = 2) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        spin(count)
    serial = time.perf_counter() - start
    start = time.perf_counter()
    pids = []
    for _ in range(processes):
        pid = os.fork()
        if pid == 0:
            for _ in range(calls // processes):
                spin(count)
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    return 100 * serial / (time.perf_counter() - start) / processes


def echo(argument: Any) -> Any:
    return argument


def _echo_over_pipes(read_fd: int, write_fd: int) -> None:
    """The child of ``pipe_latency``: unpickle, pickle back, until its input closes."""
    while True:
        head = os.read(read_fd, 4)
        if not head:
            os._exit(0)
        size, data = int.from_bytes(head, "little"), b""
        while len(data) < size:
            data += os.read(read_fd, size - len(data))
        reply = pickle.dumps(pickle.loads(data))
        os.write(write_fd, len(reply).to_bytes(4, "little") + reply)


def pipe_latency(count: int) -> tuple[float, float]:
    """mp.Pool's own floor: one pickled call and its pickled answer between two processes over
    two pipes, and nothing else (no task handler or result handler threads, no queues)."""
    to_child, from_parent = os.pipe()
    to_parent, from_child = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(from_parent)
        os.close(to_parent)
        _echo_over_pipes(to_child, from_child)
    os.close(to_child)
    os.close(from_child)

    def round_trip(argument: Any) -> Any:
        data = pickle.dumps(argument)
        os.write(from_parent, len(data).to_bytes(4, "little") + data)
        size = int.from_bytes(os.read(to_parent, 4), "little")
        reply = b""
        while len(reply) < size:
            reply += os.read(to_parent, size - len(reply))
        return pickle.loads(reply)

    try:
        return latency(round_trip, count)
    finally:
        os.close(from_parent)
        os.waitpid(pid, 0)
        os.close(to_parent)


def pool_bulk(pool: Any) -> Callable[[list[bytes]], int]:
    return lambda blobs: sum(1 for _ in pool.imap_unordered(len, blobs))


LATENCY_LABELS = {
    "per-hop": "bare chain, HMAC per hop",
    "pipe": "bare pipe exchange, two processes (mp.Pool's own floor)",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each; medians shown (3)")
    parser.add_argument("--tasks", type=int, default=500, help="1 MiB tasks per bigarg run (500)")
    parser.add_argument("--round-trips", type=int, default=2000, help="latency samples (2,000)")
    parser.add_argument("--cpu-calls", type=int, default=200, help="20 ms calls for cpu (200)")
    args = parser.parse_args(argv)
    blobs = [os.urandom(MIB)] * args.tasks
    rows: dict[str, list[float]] = {mode: [] for mode in MODES}
    rows["mp.Pool"] = []
    lat: dict[str, list[tuple[float, float]]] = {"per-hop": [], "mp.Pool": [], "pipe": []}
    count = calibrate()
    efficiency = [cpu_efficiency(count, args.cpu_calls) for _ in range(args.runs)]
    with multiprocessing.get_context("fork").Pool(2) as pool:
        pool.apply(echo, (0,))
        for _ in range(args.runs):
            for mode in MODES:
                with Chain(mode) as chain:
                    if mode == "per-hop":
                        lat[mode].append(latency(chain.round_trip, args.round_trips))
                    rows[mode].append(rate(chain.bulk, blobs))
            lat["mp.Pool"].append(latency(lambda a: pool.apply(echo, (a,)), args.round_trips))
            lat["pipe"].append(pipe_latency(args.round_trips))
            rows["mp.Pool"].append(rate(pool_bulk(pool), blobs))
    pool_rate = statistics.median(rows["mp.Pool"])
    print(f"bare chain, 2 workers, median of {args.runs}\n")
    print("| latency | p50 ms | p99 ms |\n|---|--:|--:|")
    for name, samples in lat.items():
        p50 = statistics.median(s[0] for s in samples)
        p99 = statistics.median(s[1] for s in samples)
        label = LATENCY_LABELS.get(name, name)
        print(f"| {label} | {p50:.3f} | {p99:.3f} |")
    print(f"\n| bigarg ({args.tasks} × 1 MiB) | MiB/s | × mp.Pool |\n|---|--:|--:|")
    for name, values in rows.items():
        label = name if name == "mp.Pool" else f"bare chain, MAC {name}"
        print(
            f"| {label} | {statistics.median(values):.0f} | "
            f"{statistics.median(values) / pool_rate:.2f} |"
        )
    print(
        f"\ncpu: two forked processes with no framework, {args.cpu_calls} × 20 ms: efficiency "
        f"{statistics.median(efficiency):.0f} % (runs: "
        + ", ".join(f"{e:.0f}" for e in efficiency)
        + ")"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
