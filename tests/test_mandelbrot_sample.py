"""The main job end to end: the Mandelbrot sample on a real cluster equals the serial render."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import mandelbrot


@pytest.mark.parametrize("render", [mandelbrot.render_system, mandelbrot.render_plain])
def test_the_distributed_image_equals_the_serial_reference_pixel_for_pixel(app, render):
    spec = mandelbrot.ImageSpec.fit(120, 80, 200)
    image = render(app, spec, 7, None)
    assert np.array_equal(image, mandelbrot.render_serial(spec))


def test_main_writes_a_valid_png_and_reports_a_match(cluster, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TASKSWARM_MASTER", cluster.address)
    monkeypatch.setenv("TASKSWARM_KEY_FILE", cluster.key_file)
    output = tmp_path / "out.png"
    code = mandelbrot.main(
        ["--output", str(output), "--width", "150", "--height", "100", "--quiet"]
    )
    assert code == 0
    summary = capsys.readouterr().out
    assert "matches serial reference: yes" in summary
    assert "slaves:" in summary and "speedup:" in summary
    with Image.open(output) as png:
        assert png.format == "PNG" and png.size == (150, 100)
        pixels = np.asarray(png.convert("RGB"))
    assert np.array_equal(pixels, mandelbrot.render_serial(mandelbrot.ImageSpec.fit(150, 100, 256)))
