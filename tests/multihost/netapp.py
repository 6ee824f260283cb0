"""An application node for the multi-host tests, run inside a host's namespace.

    ip netns exec NS python netapp.py tcp://MASTER:PORT KEY_FILE

The test process cannot reach the hosts' network, so it asks this node instead: one JSON
request per line on stdin (``{"op": "status"}``, ``{"op": "submit", ...}``, ``{"op": "result",
...}``, ``{"op": "ship", ...}``, ``{"op": "call", ...}``), one JSON reply per line on stdout
(``{"ok": ...}`` or ``{"error": "..."}``).

Run by path, this file is ``__main__``: the task and task system below travel to the master and
the slaves by value, so no host needs the tests on its import path.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

import taskswarm as ts

# The Mandelbrot example is a file of the checkout, not an installed module: found from here,
# its classes travel by value like the ones below.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from mandelbrot import BandTask, ImageSpec, MandelbrotSystem  # noqa: E402

#: Most seconds a gated task waits for the test to let it through before it fails.
GATE_TIMEOUT = 60.0
#: Least seconds a gated task takes: slow enough that a slave holds a couple of tasks, not a
#: pipeline of dozens, so the queue on the master still has work for slaves that come later.
MIN_TASK_SECONDS = 0.06
#: Most seconds the node waits for a task system's result.
RESULT_TIMEOUT = 60.0


def _limit(gate: Path) -> int:
    try:
        return int((gate / "limit").read_text())
    except (OSError, ValueError):
        return -1


class GatedBand(BandTask):
    """One row of the image, rendered once the gate's limit reaches it; the result also names
    the host it ran on."""

    def __init__(self, spec: ImageSpec, y0: int, gate: str) -> None:
        super().__init__(spec, y0, y0 + 1)
        self.gate = gate

    def __call__(self) -> tuple[int, np.ndarray, str]:
        started = time.monotonic()
        host = os.environ.get("TASKSWARM_TEST_HOST", "?")
        gate = Path(self.gate)
        (gate / "started" / f"{self.y0}-{host}").touch()
        while _limit(gate) < self.y0:  # the task's own wait for the test: its "work"
            if time.monotonic() - started > GATE_TIMEOUT:
                raise TimeoutError(f"row {self.y0}: the gate stayed shut for {GATE_TIMEOUT}s")
            time.sleep(0.02)
        y0, band = super().__call__()
        time.sleep(max(0.0, MIN_TASK_SECONDS - (time.monotonic() - started)))
        return y0, band, host


class GatedMandelbrot(MandelbrotSystem):
    """The sample's task system, one gated row per task; its result is the image and, for each
    row, the host whose result arrived first."""

    def __init__(self, spec: ImageSpec, gate: str) -> None:
        super().__init__(spec, band_rows=1)
        self.gate = gate
        self.ran_on: dict[int, str] = {}

    def generate_tasks(self, master: Any) -> list[GatedBand]:
        return [GatedBand(self.spec, y0, self.gate) for y0, _ in self.ranges]

    def task_finished(self, master: Any, task: Any, result: Any, error: Any) -> None:
        if error is None:
            y0, band, host = result
            self.ran_on.setdefault(y0, host)
            result = (y0, band)
        super().task_finished(master, task, result, error)

    def gather_result(self, master: Any) -> tuple[Any, Any]:
        image, error = super().gather_result(master)
        return (None if error else {"image": image, "ran_on": self.ran_on}), error


def call(app: ts.Application, folder: str, module: str, function: str, calls: list) -> list:
    """``module.function(*args)`` for each ``args`` of ``calls``, on the cluster: the module is
    imported here from ``folder`` (on this node's path alone), and each outcome comes back as
    ``["ok", result]`` or ``["error", "Type (type it names): message"]``."""
    if folder not in sys.path:
        sys.path.insert(0, folder)
        importlib.invalidate_caches()
    fn = getattr(importlib.import_module(module), function)
    futures = [app.submit(fn, *args) for args in calls]
    outcomes: list = []
    for future in futures:
        try:
            outcomes.append(["ok", future.result(RESULT_TIMEOUT)])
        except Exception as exc:  # noqa: BLE001 - the test reads what it was
            named = getattr(exc, "type_name", "")
            outcomes.append(["error", f"{type(exc).__name__} ({named}): {exc}"])
    return outcomes


def leaf(i: int, size: int) -> Any:
    """An array of ``size`` floats, all ``i``, and where it was made."""
    return np.full(size, float(i)), {os.environ.get("TASKSWARM_TEST_HOST", "?")}


def pair(a: Any, b: Any) -> Any:
    """The sum of two leaves' (or sums') arrays, and every host that made a part of it."""
    return a[0] + b[0], a[1] | b[1] | {os.environ.get("TASKSWARM_TEST_HOST", "?")}


def wire_bytes(app: ts.Application) -> float:
    """Bytes the master has received and sent so far (its ``wire_bytes`` measures)."""
    rows = app.status()["stats"]
    return sum(row["sum"] for row in rows if row["name"] == "wire_bytes")


def tree(app: ts.Application, leaves: int, size: int) -> dict:
    """A tree reduction whose every sum takes its two inputs' Futures: the inputs, made on
    one host, are given to a task that may run on another. Says how many bytes passed
    through the master meanwhile."""
    before = wire_bytes(app)
    level = [app.submit(leaf, i, size) for i in range(leaves)]
    while len(level) > 1:
        level = [app.submit(pair, level[i], level[i + 1]) for i in range(0, len(level), 2)]
    values, hosts = level[0].result(RESULT_TIMEOUT)
    through = wire_bytes(app) - before
    return {
        "first": float(values[0]),
        "size": int(values.size),
        "hosts": sorted(hosts),
        "through_master": through,
    }


def step(x: Any, seconds: float) -> Any:
    time.sleep(seconds)
    return x + 1


def graph(app: ts.Application, handles: dict[str, Any], op: str, request: dict) -> Any:
    """The task graph requests: a tree reduction, or a chain started now and its result later
    (``chain``, then ``chain-result``)."""
    if op == "tree":
        return tree(app, request["leaves"], request["size"])
    if op == "chain":
        size = request.get("size")
        future = app.submit(step, 0 if size is None else np.zeros(size), request["seconds"])
        for _ in range(request["steps"] - 1):
            future = app.submit(step, future, request["seconds"])
        handles["chain"] = future
        return None
    result = handles.pop("chain").result(RESULT_TIMEOUT)
    return result if isinstance(result, int) else float(result[0])


def serve(app: ts.Application) -> None:
    handles: dict[str, Any] = {}
    for line in sys.stdin:
        request = json.loads(line)
        try:
            op = request.pop("op")
            if op == "status":
                reply: Any = app.status()
            elif op == "submit":
                spec = ImageSpec.fit(request["width"], request["height"], request["max_iter"], 1)
                if request.get("gate"):
                    system: MandelbrotSystem = GatedMandelbrot(spec, request["gate"])
                else:
                    system = MandelbrotSystem(spec, band_rows=request["band_rows"])
                handle = app.submit_system(system)
                handles[handle.system_id] = handle
                reply = handle.system_id
            elif op == "result":
                outcome = handles.pop(request["system_id"]).result(RESULT_TIMEOUT)
                image, ran_on = (
                    (outcome["image"], outcome["ran_on"])
                    if isinstance(outcome, dict)
                    else (outcome, {})
                )
                np.save(request["save_to"], image)
                reply = {str(row): host for row, host in ran_on.items()}
            elif op == "ship":
                reply = app.upload_file(request["path"])
            elif op == "call":
                reply = call(app, **request)
            elif op in ("tree", "chain", "chain-result"):
                reply = graph(app, handles, op, request)
            else:
                raise ValueError(f"unknown op {op!r}")
        except Exception:  # noqa: BLE001 - the test reports it, with the traceback
            print(json.dumps({"error": traceback.format_exc()}), flush=True)
            continue
        print(json.dumps({"ok": reply}), flush=True)


def main() -> None:
    master, key_file = sys.argv[1], sys.argv[2]
    with ts.connect(master, key_file, connect_timeout=30) as app:
        serve(app)


if __name__ == "__main__":
    main()
