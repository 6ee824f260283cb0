"""The Mandelbrot sample's pure rendering, checked without a cluster.

The sample's promise is that a picture rendered band by band, anywhere, is bit-identical to the
serial render. These tests hold the rendering functions to that promise in one process, so that
when the end-to-end tests compare a distributed image with the reference, a mismatch can only be
the framework's fault.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mandelbrot import (
    BandTask,
    ImageSpec,
    MandelbrotSystem,
    assemble,
    band_ranges,
    render_rows,
    render_serial,
    write_png,
)

SMALL = ImageSpec.fit(96, 64, max_iter=64)


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return render_serial(SMALL)


def test_serial_render_is_rgb_uint8_of_the_spec_shape(reference: np.ndarray) -> None:
    assert reference.dtype == np.uint8
    assert reference.shape == (64, 96, 3) == SMALL.shape


@pytest.mark.parametrize("band_rows", [1, 5, 16, 63, 64, 100])
def test_bands_stacked_equal_the_serial_render(reference: np.ndarray, band_rows: int) -> None:
    bands = [render_rows(SMALL, y0, y1) for y0, y1 in band_ranges(SMALL.height, band_rows)]
    assert np.array_equal(np.concatenate(bands), reference)


def test_a_band_equals_the_same_rows_of_the_serial_render(reference: np.ndarray) -> None:
    band = render_rows(SMALL, 17, 42)
    assert band.shape == (25, 96, 3)
    assert band.dtype == np.uint8
    assert np.array_equal(band, reference[17:42])


def test_rendering_is_deterministic() -> None:
    assert np.array_equal(render_serial(SMALL), render_serial(SMALL))


def test_empty_band_and_out_of_range_rows() -> None:
    assert render_rows(SMALL, 10, 10).shape == (0, 96, 3)
    with pytest.raises(ValueError):
        render_rows(SMALL, 60, 65)
    with pytest.raises(ValueError):
        render_rows(SMALL, 5, 4)


def test_interior_points_are_black_and_the_outside_is_not() -> None:
    # A 1x1 image samples exactly its centre: c = 0 (main cardioid), c = -1 (period-2 bulb) and
    # c = -0.12 + 0.75i and c = -1.75 (period-3 bulbs, found only by iterating) are in the set.
    for cx, cy in [(0.0, 0.0), (-1.0, 0.0), (-0.12, 0.75), (-1.75, 0.0)]:
        pixel = render_serial(ImageSpec(1, 1, 256, cx, cy, 0.001))
        assert pixel.tolist() == [[[0, 0, 0]]], (cx, cy)
    outside = render_serial(ImageSpec(1, 1, 256, 1.0, 1.0, 0.001))
    assert outside.any()


def test_default_image_has_interior_and_colour(reference: np.ndarray) -> None:
    centre = reference[SMALL.height // 2, SMALL.width // 2 + 10]  # near c = -0.45: the cardioid
    corner = reference[0, 0]  # c = -2.25 + 1.0i: escapes at once
    assert centre.tolist() == [0, 0, 0]
    assert corner.any()
    assert len(np.unique(reference.reshape(-1, 3), axis=0)) > 10  # smooth colouring, not bands


def test_band_ranges_tile_the_image() -> None:
    assert band_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert band_ranges(1024, 16)[-1] == (1008, 1024)
    assert len(band_ranges(1024, 16)) == 64
    with pytest.raises(ValueError):
        band_ranges(10, 0)


def test_assemble_refuses_gaps(reference: np.ndarray) -> None:
    bands = {y0: reference[y0:y1] for y0, y1 in band_ranges(SMALL.height, 16)}
    assert np.array_equal(assemble(SMALL, bands), reference)
    del bands[16]
    with pytest.raises(ValueError):
        assemble(SMALL, bands)


def test_image_spec_validates_and_fits_the_whole_set() -> None:
    with pytest.raises(ValueError):
        ImageSpec(width=0)
    with pytest.raises(ValueError):
        ImageSpec(scale=0.0)
    assert ImageSpec.fit(1536, 1024).scale == ImageSpec().scale
    assert ImageSpec.fit(100, 1000).scale == pytest.approx(3.0 / 100)


def test_band_task_and_system_assemble_the_reference_in_process(reference: np.ndarray) -> None:
    """The task system's callbacks, driven by hand in reverse order: no cluster involved."""
    system = MandelbrotSystem(SMALL, band_rows=16)
    system.init_system(None)
    tasks = system.generate_tasks(None)
    assert len(tasks) == 4 and all(isinstance(t, BandTask) for t in tasks)
    for task in reversed(tasks):
        assert not system.is_complete(None)
        system.task_finished(None, task, task(), None)
    system.task_finished(None, tasks[0], tasks[0](), None)  # a duplicate result is harmless
    assert system.is_complete(None)
    image, error = system.gather_result(None)
    assert error is None
    assert np.array_equal(image, reference)


def test_system_reports_a_band_error() -> None:
    system = MandelbrotSystem(SMALL, band_rows=32)
    task = system.generate_tasks(None)[0]
    boom = RuntimeError("worker fell over")
    system.task_finished(None, task, None, boom)
    assert system.is_complete(None)
    assert system.gather_result(None) == (None, boom)


def test_png_round_trip(tmp_path, reference: np.ndarray) -> None:
    path = write_png(reference, tmp_path / "nested" / "small.png")
    with Image.open(path) as png:
        assert png.format == "PNG"
        assert png.mode == "RGB"
        assert png.size == (SMALL.width, SMALL.height)
        assert np.array_equal(np.asarray(png), reference)
