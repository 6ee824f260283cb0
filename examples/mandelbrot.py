"""Render the Mandelbrot set on a taskswarm cluster, and prove the result is right.

This is the project's main sample (``make run``)::

    taskswarm run examples/mandelbrot.py --output mandelbrot.png
    python examples/mandelbrot.py --width 3072 --height 2048 --max-iter 512
    taskswarm run examples/mandelbrot.py --plain --slaves 3 --workers 2
    taskswarm run examples/mandelbrot.py --center=-0.7436,0.1318 --zoom 200 --palette ultra

The image is cut into horizontal *bands* of rows; each band is one task (:class:`BandTask`) that
a worker process on some slave renders with NumPy. Two ways of running those tasks are shown:

* **task system** (the default): :class:`MandelbrotSystem` runs *on the master*. It generates
  the band tasks, is told as each one finishes, and assembles the image there, so only the
  finished picture travels back to the application -- the seed's programming model.
* **plain tasks** (``--plain``): the application pushes the bands itself with
  ``app.push_tasks`` and assembles the image from the futures as they complete -- the
  ``concurrent.futures`` style.

Either way the PNG is written with Pillow, and then (unless ``--no-reference``) the whole image is
rendered again serially in this process, timed, and compared pixel for pixel. That comparison is
the point of the sample: a distributed render is only worth its speedup if it is *exactly* the
picture a single process would have drawn. It holds because every pixel is computed from its own
row and column index alone, with element-wise IEEE operations whose results do not depend on how
many other pixels share the array, so where the band boundaries fall cannot change a single bit.

Rendering uses smooth (normalised iteration count) colouring, so the bands of colour outside the
set blend continuously instead of stepping at every iteration; points inside the set are black.
``--center`` and ``--zoom`` move the window (zoom 1 shows the whole set), ``--palette`` picks one
of :data:`PALETTES`; the palette is part of the spec every band carries, so it cannot differ
between bands either.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import taskswarm as ts
from _common import (
    add_run_options,
    aligned,
    check_positive_ints,
    on_cluster,
    positive_float,
    positive_int,
    sample_parser,
    timed,
    timing_rows,
)
from taskswarm.ops.progress import ProgressCallback

__all__ = [
    "DEFAULT_BAND_ROWS",
    "PALETTES",
    "BandTask",
    "ImageSpec",
    "MandelbrotSystem",
    "RenderReport",
    "assemble",
    "band_ranges",
    "build_parser",
    "main",
    "palette_table",
    "render_plain",
    "render_rows",
    "render_serial",
    "render_system",
    "write_png",
]

#: Rows per band: 1024 rows / 16 = 64 tasks, enough to keep every worker of a small cluster busy
#: and to balance load, while each task is still big enough that its overhead is small.
DEFAULT_BAND_ROWS = 16

#: Escape radius squared. A large radius (instead of the textbook 2) is what makes the smooth
#: iteration count really smooth: the error of its log-log correction shrinks with the radius.
_BAILOUT_SQUARED = 1.0e6

#: Size of the colour lookup table. The palette is computed once, over the same array every time,
#: so its values never depend on which pixels a band happens to contain.
_PALETTE_SIZE = 4096

#: How many palette cycles one unit of sqrt(smooth iterations) advances. The square root keeps the
#: colour bands wide near the outside of the set and dense near its boundary, where detail is.
_CYCLES_PER_SQRT_ITER = 0.11

#: The default view: the whole set, x in [-2.25, 0.75] and y in [-1, 1].
_VIEW_WIDTH, _VIEW_HEIGHT = 3.0, 2.0
_VIEW_CENTER = (-0.75, 0.0)


# -- the picture --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageSpec:
    """What to draw: pixel size, iteration limit and the window onto the complex plane.

    Frozen (and so hashable and safe to share) because one spec travels inside every task and the
    task system: if it could change after the split, bands would disagree about the picture.
    ``scale`` is complex-plane units per pixel; pixel ``(row, col)`` is the average of
    ``samples`` x ``samples`` points spread evenly over its square (anti-aliasing; 1 samples its
    centre), with row 0 at the top (largest imaginary part). ``palette`` names one of
    :data:`PALETTES`.
    """

    width: int = 1536
    height: int = 1024
    max_iter: int = 256
    center_x: float = -0.75
    center_y: float = 0.0
    scale: float = _VIEW_WIDTH / 1536
    samples: int = 3
    palette: str = "classic"

    def __post_init__(self) -> None:
        check_positive_ints(self, "width", "height", "max_iter", "samples")
        if not self.scale > 0:
            raise ValueError(f"ImageSpec.scale must be positive, not {self.scale!r}")
        if self.palette not in PALETTES:
            raise ValueError(
                f"unknown palette {self.palette!r}: choose one of {', '.join(PALETTES)}"
            )

    @classmethod
    def fit(
        cls,
        width: int = 1536,
        height: int = 1024,
        max_iter: int = 256,
        samples: int = 3,
        *,
        center: tuple[float, float] = _VIEW_CENTER,
        zoom: float = 1.0,
        palette: str = "classic",
    ) -> ImageSpec:
        """A spec of this size looking at ``center``, ``zoom`` times closer than the view that
        shows the whole set (zoom 1), whatever the aspect ratio."""
        if not zoom > 0:
            raise ValueError(f"zoom must be positive, not {zoom!r}")
        scale = max(_VIEW_WIDTH / width, _VIEW_HEIGHT / height) / zoom
        return cls(
            width=width,
            height=height,
            max_iter=max_iter,
            center_x=float(center[0]),
            center_y=float(center[1]),
            scale=scale,
            samples=samples,
            palette=palette,
        )

    @property
    def zoom(self) -> float:
        """How many times closer than the whole-set view of the same size."""
        return max(_VIEW_WIDTH / self.width, _VIEW_HEIGHT / self.height) / self.scale

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of the rendered RGB array: (height, width, 3)."""
        return (self.height, self.width, 3)


def band_ranges(height: int, band_rows: int = DEFAULT_BAND_ROWS) -> list[tuple[int, int]]:
    """Split rows [0, height) into half-open bands of ``band_rows`` rows; the last may be short."""
    if band_rows < 1:
        raise ValueError(f"band_rows must be at least 1, not {band_rows!r}")
    return [(y0, min(y0 + band_rows, height)) for y0 in range(0, height, band_rows)]


def _cosine(d: tuple[float, float, float], shift: float) -> np.ndarray:
    """A cyclic cosine palette (after Inigo Quilez): one cosine per channel, phases ``d``.

    Cyclic, like every palette here, so the colour of a pixel can wrap round as its iteration
    count grows without ever jumping.
    """
    t = np.arange(_PALETTE_SIZE, dtype=np.float64) / _PALETTE_SIZE
    rgb = 0.5 + 0.5 * np.cos(2.0 * np.pi * (t[:, None] + np.array(d) + shift))
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def _gradient(*stops: tuple[float, tuple[int, int, int]]) -> np.ndarray:
    """A cyclic gradient through ``(position, rgb)`` stops; the last blends back into the first."""
    positions = [p for p, _ in stops] + [1.0 + stops[0][0]]
    colours = np.array([c for _, c in stops] + [stops[0][1]], dtype=np.float64)
    t = np.arange(_PALETTE_SIZE, dtype=np.float64) / _PALETTE_SIZE
    t = np.where(t < positions[0], t + 1.0, t)
    rgb = np.stack([np.interp(t, positions, colours[:, k]) for k in range(3)], axis=1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


#: The named palettes (``--palette``), each a function that builds its lookup table.
PALETTES: dict[str, Callable[[], np.ndarray]] = {
    # Deep blue through white to amber and back.
    "classic": lambda: _cosine((0.00, 0.10, 0.20), 0.52),
    "rainbow": lambda: _cosine((0.00, 0.33, 0.67), 0.0),
    # The gradient Ultra Fractal made familiar: navy, sky blue, white, gold, black.
    "ultra": lambda: _gradient(
        (0.0, (0, 7, 100)),
        (0.16, (32, 107, 203)),
        (0.42, (237, 255, 255)),
        (0.6425, (255, 170, 0)),
        (0.8575, (0, 2, 0)),
    ),
    "fire": lambda: _gradient(
        (0.0, (20, 0, 0)),
        (0.2, (160, 16, 0)),
        (0.4, (255, 120, 0)),
        (0.55, (255, 230, 90)),
        (0.65, (255, 255, 235)),
        (0.8, (255, 150, 20)),
    ),
    "grey": lambda: _gradient((0.0, (24, 24, 24)), (0.5, (250, 250, 250))),
}


#: The palettes' tables this process has built. A dict, not ``functools.cache``: this file's
#: code travels to the workers by value, and a cache wrapper pickles by name, which a worker
#: (that cannot import this file) could not look up.
_palette_tables: dict[str, np.ndarray] = {}


def palette_table(name: str) -> np.ndarray:
    """The (_PALETTE_SIZE, 3) uint8 lookup table of a palette, built once per process; always
    over the same array, so its values never depend on which pixels a band happens to hold."""
    table = _palette_tables.get(name)
    if table is None:
        table = _palette_tables[name] = PALETTES[name]()
        table.flags.writeable = False  # shared by every band this process renders
    return table


def _known_interior(cr: np.ndarray, ci: np.ndarray) -> np.ndarray:
    """Points in the main cardioid or the period-2 bulb: inside the set, no need to iterate.

    These two regions are most of the set's area, and interior points are the expensive ones
    (they run all ``max_iter`` iterations), so this test is most of the speed of the default view.
    """
    xq = cr - 0.25
    ci2 = ci * ci
    q = xq * xq + ci2
    in_cardioid = q * (q + xq) <= 0.25 * ci2
    xb = cr + 1.0
    in_bulb = xb * xb + ci2 <= 0.0625
    return in_cardioid | in_bulb


def _escape(cr: np.ndarray, ci: np.ndarray, max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """Iterate z -> z*z + c from z = 0 for flat arrays of c; only still-bounded points are worked.

    Returns ``(n, r2)``: the iteration at which each point escaped (0 where it never did) and
    ``|z|**2`` at that moment. Real and imaginary parts are kept as separate float64 arrays rather
    than complex128 on purpose: every step is then one correctly-rounded IEEE operation per
    element, so a pixel's value cannot depend on how NumPy vectorises the array it sits in.
    """
    n_out = np.zeros(cr.shape, dtype=np.int64)
    r2_out = np.zeros(cr.shape, dtype=np.float64)
    idx = np.flatnonzero(~_known_interior(cr, ci))
    cr, ci = cr[idx], ci[idx]
    zr = np.zeros_like(cr)
    zi = np.zeros_like(ci)
    for n in range(1, max_iter + 1):
        if idx.size == 0:
            break
        zr2 = zr * zr
        zi2 = zi * zi
        zi = 2.0 * zr * zi + ci
        zr = zr2 - zi2 + cr
        r2 = zr * zr + zi * zi
        escaped = r2 > _BAILOUT_SQUARED
        if escaped.any():
            n_out[idx[escaped]] = n
            r2_out[idx[escaped]] = r2[escaped]
            keep = ~escaped
            idx, cr, ci, zr, zi = idx[keep], cr[keep], ci[keep], zr[keep], zi[keep]
    return n_out, r2_out


def render_rows(spec: ImageSpec, y0: int, y1: int) -> np.ndarray:
    """Render rows [y0, y1) of ``spec`` as a uint8 RGB array of shape (y1 - y0, width, 3).

    Any split of the image into bands, rendered anywhere and stacked, is bit-identical to
    :func:`render_serial`: coordinates come from the row and column indices alone, and all
    arithmetic is element-wise.
    """
    if not 0 <= y0 <= y1 <= spec.height:
        raise ValueError(f"rows [{y0}, {y1}) are not within [0, {spec.height})")
    ss = spec.samples
    offsets = (np.arange(ss, dtype=np.float64) + 0.5) / ss - 0.5  # sub-pixel positions
    cols = (np.arange(spec.width, dtype=np.float64)[:, None] + offsets).ravel()
    rows = (np.arange(y0, y1, dtype=np.float64)[:, None] + offsets).ravel()
    xs = spec.center_x + (cols - spec.width / 2 + 0.5) * spec.scale
    ys = spec.center_y + (spec.height / 2 - 0.5 - rows) * spec.scale
    cr, ci = np.meshgrid(xs, ys)
    n, r2 = _escape(cr.ravel(), ci.ravel(), spec.max_iter)

    colours = np.zeros((n.size, 3), dtype=np.float64)
    outside = n > 0
    # Normalised iteration count: n + 1 - log2(log|z|), continuous across iteration boundaries.
    log_abs_z = 0.5 * np.log(r2[outside])
    smooth = n[outside] + 1.0 - np.log2(log_abs_z)
    phase = np.sqrt(np.maximum(smooth, 0.0)) * _CYCLES_PER_SQRT_ITER
    lut_index = (np.floor(phase * _PALETTE_SIZE).astype(np.int64)) % _PALETTE_SIZE
    colours[outside] = palette_table(spec.palette)[lut_index]
    # Each pixel is the mean of its own ss x ss samples, summed in the same order in any band.
    pixels = colours.reshape(y1 - y0, ss, spec.width, ss, 3).mean(axis=(1, 3))
    return np.rint(pixels).astype(np.uint8)


def render_serial(spec: ImageSpec, band_rows: int | None = None) -> np.ndarray:
    """The whole image in this process: the reference every distributed render must equal.

    With ``band_rows`` it renders the same bands the cluster does, one after another: the fair
    serial time to compare with (one huge array is slower than many cache-sized ones).
    """
    if band_rows is None:
        return render_rows(spec, 0, spec.height)
    ranges = band_ranges(spec.height, band_rows)
    return assemble(spec, {y0: render_rows(spec, y0, y1) for y0, y1 in ranges})


def assemble(spec: ImageSpec, bands: Mapping[int, np.ndarray]) -> np.ndarray:
    """Stack bands keyed by their first row into the full image; refuses gaps and overlaps."""
    image = np.empty(spec.shape, dtype=np.uint8)
    next_row = 0
    for y0 in sorted(bands):
        band = bands[y0]
        if y0 != next_row:
            raise ValueError(f"bands do not tile the image: expected row {next_row}, got {y0}")
        if band.ndim != 3 or band.shape[1:] != spec.shape[1:] or band.dtype != np.uint8:
            raise ValueError(f"band at row {y0} has shape {band.shape} / dtype {band.dtype}")
        image[y0 : y0 + band.shape[0]] = band
        next_row = y0 + band.shape[0]
    if next_row != spec.height:
        raise ValueError(f"bands cover rows [0, {next_row}) of {spec.height}")
    return image


def write_png(image: np.ndarray, path: str | Path) -> Path:
    """Write an (height, width, 3) uint8 array as an RGB PNG, creating parent directories."""
    from PIL import Image  # imported here: only writing needs Pillow, rendering does not

    path = Path(path)
    if path.parent != Path(""):
        path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(path, format="PNG")
    return path


# -- tasks and the task system ------------------------------------------------------------------


class BandTask(ts.Task):
    """Render rows [y0, y1) in a worker process; the result is ``(y0, uint8 array)``.

    The result names its own rows so whoever collects it needs no bookkeeping of which task was
    which -- a band is self-describing, and a duplicate is harmless.
    """

    def __init__(self, spec: ImageSpec, y0: int, y1: int) -> None:
        super().__init__(name=f"mandelbrot-rows-{y0}-{y1}")
        self.spec, self.y0, self.y1 = spec, y0, y1

    def __call__(self) -> tuple[int, np.ndarray]:
        return self.y0, render_rows(self.spec, self.y0, self.y1)


class MandelbrotSystem(ts.TaskSystem):
    """Runs on the master: one :class:`BandTask` per band, the image assembled there.

    Its state is the spec, the bands received so far (a dict keyed by first row, so a result
    delivered twice is stored once) and the first error; nothing else, because the system is
    pickled to the master and its callbacks run there.
    """

    def __init__(self, spec: ImageSpec, band_rows: int = DEFAULT_BAND_ROWS) -> None:
        super().__init__()
        self.spec = spec
        self.band_rows = band_rows
        self.ranges = band_ranges(spec.height, band_rows)
        self.bands: dict[int, np.ndarray] = {}
        self.error: BaseException | None = None

    def init_system(self, master: Any) -> None:
        """Nothing to prepare: the spec is all a band needs."""

    def generate_tasks(self, master: Any) -> list[BandTask]:
        return [BandTask(self.spec, y0, y1) for y0, y1 in self.ranges]

    def task_finished(
        self, master: Any, task: Any, result: Any, error: BaseException | None
    ) -> None:
        if error is not None:
            # Rendering is deterministic, so running the band again would fail the same way:
            # keep the first error and let the system finish with it.
            if self.error is None:
                self.error = error
            return
        y0, band = result
        self.bands[y0] = band

    def is_complete(self, master: Any) -> bool:
        return self.error is not None or len(self.bands) == len(self.ranges)

    def gather_result(self, master: Any) -> tuple[np.ndarray | None, BaseException | None]:
        if self.error is not None:
            return None, self.error
        try:
            return assemble(self.spec, self.bands), None
        except ValueError as exc:
            return None, exc

    @property
    def total_tasks(self) -> int:
        return len(self.ranges)


def warm_up(app: Any, spec: ImageSpec, workers: int) -> None:
    """Have every worker import NumPy and this module before the clock starts, as the serial
    reference already has: the timing compares rendering, not interpreter start-up."""
    tiny = ImageSpec.fit(spec.width, 1, spec.max_iter, 1)
    for future in app.push_tasks([BandTask(tiny, 0, 1) for _ in range(2 * max(1, workers))]):
        future.result()


def render_system(
    app: Any, spec: ImageSpec, band_rows: int, progress: ProgressCallback | None = None
) -> np.ndarray:
    """Render with :class:`MandelbrotSystem` on the master; blocks until the image is back."""
    return app.run_system(MandelbrotSystem(spec, band_rows), progress=progress)


def render_plain(
    app: Any, spec: ImageSpec, band_rows: int, progress: ProgressCallback | None = None
) -> np.ndarray:
    """Render by pushing plain :class:`BandTask` s and assembling the image from their futures."""
    tasks = [BandTask(spec, y0, y1) for y0, y1 in band_ranges(spec.height, band_rows)]
    if progress is not None:
        progress(0, len(tasks))  # the display's clock starts now, not at the first band
    futures = app.push_tasks(tasks)
    bands: dict[int, np.ndarray] = {}
    for done, future in enumerate(concurrent.futures.as_completed(futures), start=1):
        y0, band = future.result()  # re-raises the task's own exception, remote traceback attached
        bands[y0] = band
        if progress is not None:
            progress(done, len(tasks))
    return assemble(spec, bands)


# -- command line -------------------------------------------------------------------------------


@dataclass
class RenderReport:
    """What ``main`` prints at the end; kept as data so tests and benchmarks can reuse it."""

    output: Path
    spec: ImageSpec
    mode: str
    tasks: int
    slaves: int
    workers: int
    seconds_distributed: float
    seconds_serial: float | None = None
    matches_reference: bool | None = None

    def lines(self) -> list[str]:
        spec = self.spec
        rows = [
            ("output", str(self.output)),
            (
                "size",
                f"{spec.width}x{spec.height}, max_iter {spec.max_iter}, "
                f"{spec.samples}x{spec.samples} samples per pixel",
            ),
            (
                "view",
                f"centre {spec.center_x:.10g},{spec.center_y:.10g}, zoom {spec.zoom:.6g}x, "
                f"palette {spec.palette}",
            ),
            ("mode", self.mode),
            ("tasks", str(self.tasks)),
            *timing_rows(
                self.slaves,
                self.workers,
                self.seconds_distributed,
                self.seconds_serial,
                self.matches_reference,
            ),
        ]
        return aligned(rows)


def _point(text: str) -> tuple[float, float]:
    """``X,Y`` as a point of the complex plane (``--center``)."""
    parts = text.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        x, y = float(parts[0]), float(parts[1])
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a point: write X,Y, e.g. --center=-0.75,0.1"
        ) from None
    if not (abs(x) < float("inf") and abs(y) < float("inf")):
        raise argparse.ArgumentTypeError(f"{text!r}: both coordinates must be finite")
    return x, y


def _attach_negative_values(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """``--center -1.2,0.3`` as ``--center=-1.2,0.3``: argparse would read a value that starts
    with '-' and is not a plain number as an option, and refuse it."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in options and arg[:1] == "-" and arg[1:2] in set("0123456789."):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def build_parser() -> argparse.ArgumentParser:
    """The sample's options; cluster options default to what ``taskswarm run`` set up."""
    defaults = ImageSpec()
    parser = sample_parser(
        "mandelbrot",
        "Render the Mandelbrot set on a taskswarm cluster, one task per band of rows,\n"
        "write it as a PNG, then render it again serially in this process and check\n"
        "that the two images match pixel for pixel.",
        "Without --master (and without TASKSWARM_MASTER, which `taskswarm run` sets),\n"
        "an embedded local cluster is started for the run. Exit status: 0 when the\n"
        "image matches the serial reference (or --no-reference), 1 when it does not.",
        [
            "taskswarm run examples/mandelbrot.py --output mandelbrot.png",
            "python examples/mandelbrot.py --plain --slaves 3 --workers 2",
            "python examples/mandelbrot.py --master tcp://10.0.0.5:5555 --key-file cluster.key",
            "python examples/mandelbrot.py --center -0.7436,0.1318 --zoom 200 --palette ultra",
            "python examples/mandelbrot.py --center -1.25,0 --zoom 8 --max-iter 1024",
        ],
    )
    image = parser.add_argument_group("image")
    image.add_argument(
        "--output",
        "-o",
        type=Path,
        default=Path("mandelbrot.png"),
        metavar="PATH",
        help="where to write the PNG (default: %(default)s)",
    )
    image.add_argument(
        "--width",
        type=positive_int,
        default=defaults.width,
        metavar="PX",
        help="image width in pixels (default: %(default)s)",
    )
    image.add_argument(
        "--height",
        type=positive_int,
        default=defaults.height,
        metavar="PX",
        help="image height in pixels (default: %(default)s)",
    )
    image.add_argument(
        "--max-iter",
        type=positive_int,
        default=defaults.max_iter,
        metavar="N",
        help="iteration limit; higher is slower and sharper (default: %(default)s)",
    )
    image.add_argument(
        "--samples",
        type=positive_int,
        default=defaults.samples,
        metavar="N",
        help="anti-aliasing: N x N samples per pixel; 1 is fastest (default: %(default)s)",
    )
    image.add_argument(
        "--center",
        type=_point,
        default=_VIEW_CENTER,
        metavar="X,Y",
        help="the point of the complex plane at the centre of the image "
        "(default: -0.75,0, the middle of the whole set)",
    )
    image.add_argument(
        "--zoom",
        type=positive_float,
        default=1.0,
        metavar="Z",
        help="magnification: 1 shows the whole set, 100 a window 100 times narrower; past about "
        "1e13 float64 runs out of digits and the picture turns blocky (default: %(default)s)",
    )
    image.add_argument(
        "--palette",
        choices=list(PALETTES),
        default=defaults.palette,
        help="colours outside the set; inside is always black (default: %(default)s)",
    )
    run = parser.add_argument_group("how to run")
    run.add_argument(
        "--band-rows",
        type=positive_int,
        default=DEFAULT_BAND_ROWS,
        metavar="N",
        help="rows per task; the image is split into ceil(height / N) tasks (default: %(default)s)",
    )
    add_run_options(
        parser,
        run,
        plain="push plain tasks from this application and assemble the image here, "
        "instead of running a task system on the master",
        no_reference="skip the serial reference render and the pixel-for-pixel check",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Render, write, check. Returns 0 when the image matches the serial reference, else 1."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(_attach_negative_values(argv, ("--center",)))
    spec = ImageSpec.fit(
        args.width,
        args.height,
        args.max_iter,
        args.samples,
        center=args.center,
        zoom=args.zoom,
        palette=args.palette,
    )
    render = render_plain if args.plain else render_system

    with on_cluster(args) as cluster:
        warm_up(cluster.app, spec, cluster.workers)
        image, seconds_distributed = cluster.timed(
            "rendering", lambda progress: render(cluster.app, spec, args.band_rows, progress)
        )

    report = RenderReport(
        output=write_png(image, args.output),
        spec=spec,
        mode=cluster.mode,
        tasks=len(band_ranges(spec.height, args.band_rows)),
        slaves=cluster.slaves,
        workers=cluster.workers,
        seconds_distributed=seconds_distributed,
    )
    if not args.no_reference:
        reference, report.seconds_serial = timed(lambda: render_serial(spec, args.band_rows))
        report.matches_reference = bool(np.array_equal(image, reference))

    print("\n".join(report.lines()))
    return 1 if report.matches_reference is False else 0


if __name__ == "__main__":
    # Run as a file, the classes above live in __main__ and travel to the master and the
    # workers by value, and so does what they use of _common, this file's sibling module.
    sys.exit(main())
