"""The documentation works: its marked code blocks run and print what the page says, and the
site builds with ``mkdocs build --strict``.

A block is marked runnable by an HTML comment on the line just before its opening fence (it does
not show on the page; docs/CONTRIBUTING-docs.md explains them to writers):

    <!-- run -->                  run the block; it starts a chain
    <!-- run: continue -->        run it after the blocks before it in the chain: a chain's python
                                  blocks are joined into one program, its sh blocks into one
                                  script, run in one directory
    <!-- run: file=NAME -->       write the block to NAME in that directory instead of running it
                                  (python files are compiled); ``<!-- run: continue file=NAME -->``
                                  joins a chain
    <!-- output -->               the runnable block before it must print exactly this on stdout

Every block of ``docs/*.md`` and ``README.md`` so marked is one test, named ``FILE:LINE``. A chain
runs once, for all of its tests, in a fresh process in an empty temporary directory, with
``.venv/bin`` (this interpreter's directory) first on PATH, no ``TASKSWARM_*`` variables from the
caller, and a deadline; a mark printed between its blocks tells their output apart, and a block
passes when the run got past its end. The whole process group is killed afterwards, so a cluster
a block leaves behind cannot outlive the test.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]
#: Seconds the blocks of one chain may run together; a LocalCluster takes a second or two.
CHAIN_TIMEOUT = 90.0
#: Printed before each block of a chain (with its number) and after the last.
OUTPUT_MARK = "== doc block"

pytestmark = pytest.mark.timeout(CHAIN_TIMEOUT + 30)

_MARKER = re.compile(r"^\s*<!--\s*(?P<what>run|output)\b(?::(?P<args>[^>]*?))?\s*-->\s*$")
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*?)\s*$")
_LANGUAGES = {"python": "python", "py": "python", "sh": "sh", "bash": "sh", "shell": "sh"}


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    info: str
    code: str
    runnable: bool = False
    continues: bool = False
    file: str | None = None
    expected: str | None = None

    @property
    def language(self) -> str | None:
        return _LANGUAGES.get(self.info.split()[0].lower() if self.info else "")

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def _read_fence(lines: list[str], start: int) -> tuple[str, str, int]:
    """The info string and the dedented text of the fenced block opening at ``start``, and the
    index of the line after its closing fence."""
    opening = _FENCE.match(lines[start])
    assert opening is not None
    indent, fence = opening["indent"], opening["fence"]
    body: list[str] = []
    for index in range(start + 1, len(lines)):
        line = lines[index]
        stripped = line.strip()
        if stripped.startswith(fence[0] * len(fence)) and not stripped.strip(fence[0]):
            return opening["info"], "".join(body), index + 1
        body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
    raise ValueError("the fence is never closed")


def _apply_marker(block: Block, args: str) -> list[str]:
    """Read ``continue`` and ``file=NAME``; returns what is wrong with them, if anything."""
    block.runnable = True
    for word in args.split():
        if word == "continue":
            block.continues = True
        elif word.startswith("file=") and len(word) > 5:
            block.file = word[5:]
        else:
            return [f"unknown word {word!r} in the run marker"]
    if block.file is None and block.language is None:
        return [
            f"a runnable block must be python or sh (or written with file=), not {block.info!r}"
        ]
    return []


def parse_page(page: Path) -> tuple[list[Block], list[str]]:
    """Every marked block of a page, and the problems with its markers (as ``FILE:LINE: ...``)."""
    lines = page.read_text().splitlines(keepends=True)
    blocks: list[Block] = []
    problems: list[str] = []
    index = 0
    while index < len(lines):
        marker = _MARKER.match(lines[index])
        index += 1
        if marker is None:
            continue
        where = f"{page.relative_to(ROOT)}:{index}"
        if index >= len(lines) or not _FENCE.match(lines[index]):
            problems.append(f"{where}: a marker must stand just before a block's opening fence")
            continue
        info, code, after = _read_fence(lines, index)
        block = Block(page, index + 1, info, code)
        if marker["what"] == "output":
            before = blocks[-1] if blocks else None
            if before is None or before.file is not None or before.expected is not None:
                problems.append(f"{where}: an output block must follow a runnable block")
            else:
                before.expected = code
        else:
            problems += [f"{where}: {p}" for p in _apply_marker(block, marker["args"] or "")]
            if block.continues and not blocks:
                problems.append(f"{where}: 'continue' needs a runnable block before it")
            blocks.append(block)
        index = after
    return blocks, problems


def collect() -> tuple[list[tuple[Block, list[Block]]], list[str]]:
    """Each runnable block with the whole chain it belongs to: a plain ``run`` block and the
    ``continue`` blocks after it."""
    cases: list[tuple[Block, list[Block]]] = []
    problems: list[str] = []
    for page in PAGES:
        blocks, found = parse_page(page)
        problems += found
        chains: list[list[Block]] = []
        for block in blocks:
            if block.continues and chains:
                chains[-1].append(block)
            else:
                chains.append([block])
        cases += [(block, chain) for chain in chains for block in chain]
    return cases, problems


CASES, PROBLEMS = collect()


def _environment(directory: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("TASKSWARM_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["XDG_DATA_HOME"] = str(directory / ".data")  # a master's default journal stays here
    env["PYTHONUNBUFFERED"] = "1"
    env["NO_MKDOCS_2_WARNING"] = "1"  # Material's banner about its successor, on every build
    return env


def _run(command: list[str], directory: Path) -> tuple[subprocess.CompletedProcess, bool]:
    """Run in a process group of its own and kill whatever is left of the group at the end;
    returns the outcome and whether the deadline cut it short."""
    process = subprocess.Popen(
        command,
        cwd=directory,
        env=_environment(directory),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    timed_out = False
    try:
        stdout, stderr = process.communicate(timeout=CHAIN_TIMEOUT)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # the group is gone already: nothing was left behind
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr), timed_out


@dataclass
class ChainRun:
    """One run of a chain's blocks of one language, with each block's own output: None for a
    block the run never got to the end of."""

    result: subprocess.CompletedProcess
    timed_out: bool
    outputs: list[str | None]

    def report(self, block: Block) -> str:
        state = f"ran past {CHAIN_TIMEOUT:g}s" if self.timed_out else "exited"
        return (
            f"--- the chain of {block.name} {state} {self.result.returncode}"
            f"\n--- stdout\n{self.result.stdout}\n--- stderr\n{self.result.stderr[-4000:]}"
        )


#: Chains already run, by (first block, language): each chain runs once for all its tests.
_RUNS: dict[tuple[str, str], ChainRun] = {}


def _mark(language: str, index: int) -> str:
    text = f"{OUTPUT_MARK} {index}"
    return f"print({text!r})" if language == "python" else f"echo {text!r}"


def _steps(chain: list[Block], language: str) -> list[Block]:
    return [step for step in chain if step.file is None and step.language == language]


def _run_chain(chain: list[Block], language: str, directory: Path) -> ChainRun:
    """Write the chain's files, then run its blocks of ``language`` as one program with a mark
    printed before each block and after the last, so each block's output can be told apart."""
    key = (chain[0].name, language)
    if key in _RUNS:
        return _RUNS[key]
    for step in chain:
        if step.file is not None:
            (directory / step.file).write_text(step.code)
    steps = _steps(chain, language)
    parts = []
    for index, step in enumerate(steps):
        parts += [_mark(language, index), step.code]
    parts.append(_mark(language, len(steps)))
    if language == "python":
        script = directory / "doc_chain.py"
        command = [sys.executable, str(script)]
    else:
        script = directory / "doc_chain.sh"
        command = ["bash", "-e", "-o", "pipefail", str(script)]
    script.write_text("\n".join(parts))
    result, timed_out = _run(command, directory)
    outputs: list[str | None] = []
    for index in range(len(steps)):
        _, started, rest = result.stdout.partition(f"{OUTPUT_MARK} {index}\n")
        own, ended, _ = rest.partition(f"{OUTPUT_MARK} {index + 1}\n")
        outputs.append(own if started and ended else None)
    if result.returncode != 0 and outputs:
        outputs[-1] = None  # the last block's teardown failed, or the run never got there
    _RUNS[key] = ChainRun(result, timed_out, outputs)
    return _RUNS[key]


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.strip().splitlines()]


def test_every_marker_stands_before_a_code_block_it_can_run() -> None:
    assert not PROBLEMS, "\n".join(PROBLEMS)


def test_the_docs_have_runnable_blocks() -> None:
    pages = {block.page.name for block, _ in CASES}
    assert {"quickstart.md", "tutorial.md", "porting.md", "coming-from.md"} <= pages


@pytest.mark.parametrize(("block", "chain"), CASES, ids=[block.name for block, _ in CASES])
def test_code_block_runs(block: Block, chain: list[Block], tmp_path: Path) -> None:
    if block.file is not None:
        if block.file.endswith(".py"):
            compile(block.code, block.file, "exec")
        return
    assert block.language is not None
    run = _run_chain(chain, block.language, tmp_path)
    index = next(i for i, step in enumerate(_steps(chain, block.language)) if step is block)
    own = run.outputs[index]
    assert own is not None, run.report(block)
    if block.expected is not None:
        assert _lines(own) == _lines(block.expected), run.report(block)


def test_concepts_names_every_message_kind() -> None:
    """The message table of concepts.md must follow ``taskswarm.protocol.codec.Kind``."""
    from taskswarm.protocol.codec import Kind

    text = (DOCS / "concepts.md").read_text()
    kinds = [
        name for name, value in vars(Kind).items() if name.isupper() and isinstance(value, str)
    ]
    missing = [name for name in kinds if f"`{name}`" not in text]
    assert not missing, f"docs/concepts.md does not describe these message kinds: {missing}"


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """Every page is in the nav, every link resolves, every docstring renders: any warning of
    ``mkdocs build --strict`` fails. Takes a few seconds (mkdocstrings reads the package)."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=_environment(tmp_path),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CHAIN_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr[-6000:]
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "api.html").is_file()
    print(f"mkdocs build --strict: {time.monotonic() - started:.1f}s")
