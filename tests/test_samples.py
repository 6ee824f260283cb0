"""The samples as their users run them: each one's ``main`` (or the `taskswarm run` command) on a
real cluster, in a small configuration, checked against what the sample itself promises."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dnacurve
import expensive
import mandelbrot
import montecarlo
import reversemd5
import taskswarm as ts


def on(cluster: ts.LocalCluster) -> list[str]:
    """The options that point a sample at the test's cluster (2 slaves, 1 worker each)."""
    return ["--master", cluster.address, "--key-file", cluster.key_file]


def field(summary: str, name: str) -> str:
    """The value of one ``name: value`` line of a sample's summary."""
    match = re.search(rf"^{re.escape(name)}:\s+(.*)$", summary, re.MULTILINE)
    assert match, f"no {name!r} line in:\n{summary}"
    return match.group(1)


# -- mandelbrot ---------------------------------------------------------------------------------


def test_mandelbrot_zoomed_view_and_palette_equal_the_serial_reference(cluster, tmp_path, capsys):
    output = tmp_path / "zoom.png"
    view = ["--center", "-0.7436,0.1318", "--zoom", "50", "--palette", "ultra"]
    size = ["--width", "96", "--height", "64", "--max-iter", "300", "--samples", "1"]
    code = mandelbrot.main(["--output", str(output), *view, *size, "--plain", *on(cluster)])
    summary, progress = capsys.readouterr()
    assert code == 0, summary
    assert field(summary, "matches serial reference") == "yes"
    assert field(summary, "view") == "centre -0.7436,0.1318, zoom 50x, palette ultra"
    assert "rendering (plain tasks): 4/4 tasks (100%)" in progress

    spec = mandelbrot.ImageSpec.fit(
        96, 64, 300, 1, center=(-0.7436, 0.1318), zoom=50.0, palette="ultra"
    )
    with Image.open(output) as png:
        pixels = np.asarray(png.convert("RGB"))
    assert np.array_equal(pixels, mandelbrot.render_serial(spec))
    # Both options took effect: another palette, or the whole set, is another picture.
    classic = dataclasses.replace(spec, palette="classic")
    whole = mandelbrot.ImageSpec.fit(96, 64, 300, 1, palette="ultra")
    assert not np.array_equal(pixels, mandelbrot.render_serial(classic))
    assert not np.array_equal(pixels, mandelbrot.render_serial(whole))


@pytest.mark.parametrize("bad", ["1;2", "1,2,3", "x,0", "nan,0"])
def test_mandelbrot_says_how_to_write_a_center_it_cannot_read(bad, capsys):
    with pytest.raises(SystemExit) as exit_:
        mandelbrot.main(["--center", bad])
    assert exit_.value.code == 2
    assert "--center" in capsys.readouterr().err


def test_every_palette_is_cyclic_and_zoom_narrows_the_window():
    for name in mandelbrot.PALETTES:
        table = mandelbrot.palette_table(name).astype(int)
        assert table.shape == (4096, 3)
        assert np.abs(table[0] - table[-1]).max() <= 8, name  # no jump where the colours wrap
    whole = mandelbrot.ImageSpec.fit(300, 200)
    assert mandelbrot.ImageSpec.fit(300, 200, zoom=4.0).scale == whole.scale / 4
    assert mandelbrot.ImageSpec.fit(300, 200, zoom=4.0).zoom == pytest.approx(4.0)
    with pytest.raises(ValueError, match="palette"):
        mandelbrot.ImageSpec(palette="sepia")


def test_mandelbrot_runs_by_path_from_another_directory(cluster, nodes, tmp_path):
    """Neither the file nor its sibling _common is importable where the program runs, nor on
    the master and the slaves: both must travel with the tasks."""
    out = nodes.run(
        "run", mandelbrot.__file__, *on(cluster),
        "--output", "m.png", "--width", "48", "--height", "32", "--quiet",
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert field(out.stdout, "matches serial reference") == "yes"
    with Image.open(tmp_path / "m.png") as png:
        pixels = np.asarray(png.convert("RGB"))
    assert np.array_equal(pixels, mandelbrot.render_serial(mandelbrot.ImageSpec.fit(48, 32)))


# -- reversemd5 ---------------------------------------------------------------------------------


def test_reversemd5_task_system_finds_the_preimage_and_stops_early(cluster, capsys):
    argv = ["--range", "0:5000000", "--chunk", "20000", "--secret", "31337", "--quiet"]
    assert reversemd5.main([*argv, *on(cluster)]) == 0
    summary = capsys.readouterr().out
    assert field(summary, "preimage") == "'31337' (candidate 31,337)"
    assert field(summary, "verified") == "yes"
    assert field(summary, "target") == f"md5 {hashlib.md5(b'31337').hexdigest()}"
    searched = int(field(summary, "chunks").split()[0].replace(",", ""))
    assert searched < 250 // 2  # the master cancelled the rest once it was found
    assert "hashes/s" in field(summary, "rate")
    # At least the finding chunk's share; chunks cancelled mid-way are not counted.
    assert int(field(summary, "hashes tried").split()[0].replace(",", "")) >= 31337 - 20000 + 1


def test_reversemd5_plain_mode_cancels_outstanding_chunks_when_found(cluster, capsys):
    target = hashlib.sha256(b"cat").hexdigest()
    argv = ["--target", target, "--hash", "sha256", "--alphabet", "lower", "--length", "1-5"]
    code = reversemd5.main([*argv, "--chunk", "50000", "--plain", "--quiet", *on(cluster)])
    summary = capsys.readouterr().out
    assert code == 0, summary
    assert field(summary, "preimage") == "'cat' (candidate 2,073)"
    chunks = field(summary, "chunks")
    assert int(chunks.split()[0]) < 248 // 2, chunks
    assert "cancelled in flight" in chunks


def test_reversemd5_says_when_the_target_is_not_a_digest(capsys):
    with pytest.raises(SystemExit):
        reversemd5.main(["--target", "abcd"])
    assert "32 hex digits" in capsys.readouterr().err


def test_word_spaces_number_every_word_and_scan_from_anywhere():
    space = reversemd5.WordSpace(b"xyz", 1, 3)
    words = [bytes(w) for n in (1, 2, 3) for w in itertools.product(b"xyz", repeat=n)]
    assert [space.candidate(i) for i in range(space.size)] == words
    for index, word in enumerate(words):
        assert space.index_of(word) == index
        target = hashlib.md5(word).digest()
        assert space.scan(0, space.size, "md5", target) == (index, index + 1)
        assert space.scan(index, 1, "md5", target) == (index, 1)
        assert space.scan(index + 1, space.size - index - 1, "md5", target)[0] is None


def test_reverse_hash_system_completes_as_soon_as_a_chunk_finds_it():
    """The task system's callbacks, driven by hand: no cluster involved."""
    target = hashlib.md5(b"250").digest()
    plan = reversemd5.SearchPlan(reversemd5.NumberSpace(0, 1000), "md5", target, chunk_size=100)
    system = reversemd5.ReverseHashSystem(plan, window=2)
    first = system.generate_tasks(None)
    assert [t.offset for t in first] == [0, 100]
    for task in first:
        system.task_finished(None, task, task(), None)
        assert not system.is_complete(None)
    third = system.tally.next_tasks(1)[0]
    system.task_finished(None, third, third(), None)
    assert system.is_complete(None)
    outcome, error = system.gather_result(None)
    assert error is None
    assert (outcome.preimage, outcome.chunks_searched, outcome.chunks_total) == (b"250", 3, 10)


# -- expensive ----------------------------------------------------------------------------------


def test_expensive_under_taskswarm_run_reports_speedup_and_efficiency(cluster, nodes):
    out = nodes.run(
        "run", expensive.__file__, *on(cluster),
        "--count", "6", "--duration", "0.05", "--how", "sleep",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert field(out.stdout, "tasks run") == "6"
    assert field(out.stdout, "seconds serial (ideal)").startswith("0.300 ")
    assert field(out.stdout, "seconds best possible").startswith("0.150 ")  # 2 workers
    assert re.fullmatch(r"\d+\.\d\dx \(ideal 2\.00x\)", field(out.stdout, "speedup"))
    assert "% of the ideal for 2 workers" in field(out.stdout, "efficiency")
    assert "than serial" in field(out.stdout, "improvement")
    assert "expensive tasks (task system): 6/6 tasks (100%)" in out.stderr  # progress: log lines


def test_expensive_runs_as_a_file_in_the_plain_mode(cluster, nodes):
    sample = Path(expensive.__file__)
    out = nodes.run(
        "run", str(sample), *on(cluster),
        "--count", "4", "--duration", "0.02", "--plain", "--quiet",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert field(out.stdout, "mode") == "plain tasks"
    assert field(out.stdout, "tasks per worker").endswith("(2 worker processes on 1 host)")


def test_a_busy_task_uses_its_cost_in_cpu_time():
    before = time.thread_time()
    run = expensive.ExpensiveTask(7, 0.05, "busy")()
    assert time.thread_time() - before >= 0.05
    assert run.index == 7 and run.seconds >= 0.05


# -- montecarlo ---------------------------------------------------------------------------------

SMALL_PLAN = ["--grid", "64", "--pilot", "2", "--points", "50000", "--rows-per-task", "8"]


@pytest.mark.parametrize("mode", [[], ["--plain"]], ids=["task-system", "plain"])
def test_montecarlo_equals_the_serial_reference_exactly(cluster, capsys, mode):
    assert montecarlo.main([*SMALL_PLAN, "--seed", "11", "--quiet", *mode, *on(cluster)]) == 0
    summary = capsys.readouterr().out
    assert field(summary, "matches serial reference") == "yes"
    reference = montecarlo.run_serial(montecarlo.Plan(11, 64, 2, 50000, 8))
    assert field(summary, "estimate of pi") == f"{reference.pi:.12f}"
    assert abs(reference.pi - np.pi) < 0.01
    assert field(summary, "arrays moved").startswith("0.1 MiB to workers, 0.1 MiB back")
    assert field(summary, "tasks") == "16 (2 rounds of 8)"


def test_neyman_allocation_shares_out_exactly_the_points_asked_for():
    plan = montecarlo.Plan(3, 32, 4, 10_001, 8)
    counts = plan.pilot_counts()
    hits = montecarlo.throw(plan.seed, 0, 0, counts)
    allocation = montecarlo.allocate(counts, hits, plan.points)
    assert allocation.sum() == plan.points and allocation.min() >= 0
    assert np.array_equal(allocation, montecarlo.allocate(counts, hits, plan.points))
    mixed = (hits > 0) & (hits < counts)
    assert allocation[mixed].mean() > allocation[~mixed].mean()  # darts go where the doubt is


# -- dnacurve -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [[], ["--plain"]], ids=["task-system", "plain"])
def test_dnacurve_reports_the_masters_memory_and_matches_the_reference(cluster, capsys, mode):
    argv = ["--rounds", "3", "--tasks", "6", "--first-kib", "4", "--window", "256", "--quiet"]
    assert dnacurve.main([*argv, *mode, *on(cluster)]) == 0
    summary = capsys.readouterr().out
    assert field(summary, "matches serial reference") == "yes"
    memory = field(summary, "master RSS")
    assert re.match(
        r"before \d+\.\d MiB, after \d+\.\d MiB \([+-]\d+\.\d MiB\); peak \d+\.\d MiB", memory
    )
    for round_no in (1, 2, 3):
        assert re.search(r"master RSS \d+\.\d MiB$", field(summary, f"round {round_no}"))
    assert field(summary, "payload sent") == "0.2 MiB of DNA in 18 tasks"


def test_the_cumulative_gc_skew_finds_the_planted_origin_and_terminus():
    plan = dnacurve.GenomePlan(rounds=2, tasks=8, first_chunk=8192, window=256)
    for result in dnacurve.run_serial(plan):
        origin, terminus = dnacurve.find_origin(result.counts, plan.window)
        planted_origin, planted_terminus = plan.planted(result.round_no)
        tolerance = plan.genome_length(result.round_no) // 50
        assert abs(origin - planted_origin) < tolerance
        assert abs(terminus - planted_terminus) < tolerance
