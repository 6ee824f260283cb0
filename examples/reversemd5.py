"""Find the input behind an MD5 (or SHA-1, SHA-256) digest by brute force on a taskswarm cluster.

::

    taskswarm run examples/reversemd5.py
    taskswarm run examples/reversemd5.py --target 6b3d43184271885b9fb260c59821d5e8 \\
        --alphabet lower --length 1-5
    python examples/reversemd5.py --secret swarm --alphabet lower --length 1-5 --plain

The candidates form a *search space*: the decimal numbers of a range (:class:`NumberSpace`) or
every word of an alphabet with a length in a range, shortest first (:class:`WordSpace`). Each
space numbers its candidates 0, 1, 2, ..., so a *chunk* is just ``(offset, count)`` and a task
(:class:`ChunkTask`) hashes one chunk in a worker process and says whether the target was in it.

A search stops as soon as the preimage is found, which is the interesting part of this sample:

* **task system** (the default): :class:`ReverseHashSystem` runs on the master and keeps a
  window of chunks in flight, pushing the next one as each finishes (``master.push_task``), so
  a space of billions of candidates never turns into billions of queued tasks. When a chunk
  reports the preimage, ``is_complete`` answers True at once; the master gathers the result and
  cancels the chunks still queued or running.
* **plain tasks** (``--plain``): the application keeps the window itself with
  ``app.push_tasks`` and, once it has the answer, cancels the outstanding futures
  (``Future.cancel()``), which drops their tasks from the master's queue.

Ctrl-C in the task-system mode cancels the system on the master (``app.cancel_system``).
The answer is checked the only way that matters: its digest is computed again here.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import hashlib
import itertools
import math
import string
import sys
from dataclasses import dataclass
from typing import Any

import taskswarm as ts
from _common import (
    add_run_options,
    aligned,
    cancel_all,
    on_cluster,
    positive_int,
    rescaled,
    run_system,
    sample_parser,
)
from taskswarm.ops.progress import ProgressCallback

__all__ = [
    "ALGORITHMS",
    "ALPHABETS",
    "ChunkResult",
    "ChunkTask",
    "NumberSpace",
    "ReverseHashSystem",
    "SearchOutcome",
    "SearchPlan",
    "WordSpace",
    "build_parser",
    "main",
    "search_plain",
    "search_system",
]

#: The digests this sample can reverse: hashlib constructors, called directly (``hashlib.new``
#: would look the name up again for every candidate).
ALGORITHMS = {"md5": hashlib.md5, "sha1": hashlib.sha1, "sha256": hashlib.sha256}

#: Named alphabets for ``--alphabet``; anything else given is taken as the characters themselves.
ALPHABETS = {
    "lower": string.ascii_lowercase,
    "upper": string.ascii_uppercase,
    "digits": string.digits,
    "hex": "0123456789abcdef",
    "letters": string.ascii_letters,
    "alnum": string.ascii_letters + string.digits,
}

#: Candidates per task: a quarter of a million is about a tenth of a second of hashing, long
#: enough that a task's overhead is lost in it, short enough that a find stops the search soon.
DEFAULT_CHUNK = 250_000

#: Chunks in flight per worker: enough that no worker waits for its next chunk, few enough that
#: little work is thrown away when the preimage turns up.
WINDOW_PER_WORKER = 4

#: The default target is the MD5 of this number; at about 2 million hashes a second per core it
#: takes a few seconds for two workers to reach it.
DEFAULT_SECRET = "8675309"

#: Most suffixes a worker precomputes for a word search (see :meth:`WordSpace.scan`).
_MAX_SUFFIXES = 1 << 16


# -- search spaces ------------------------------------------------------------------------------


@dataclass(frozen=True)
class NumberSpace:
    """The decimal numbers ``start``, ..., ``stop - 1``, as ASCII text (``b"42"``)."""

    start: int = 0
    stop: int = 100_000_000

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.stop:
            raise ValueError(f"the range {self.start}:{self.stop} is empty or negative")

    @property
    def size(self) -> int:
        return self.stop - self.start

    def describe(self) -> str:
        return f"decimal numbers {self.start:,} to {self.stop - 1:,}"

    def candidate(self, index: int) -> bytes:
        return b"%d" % (self.start + index)

    def index_of(self, value: bytes) -> int | None:
        """Where ``value`` is in this space; None when it is not one of its candidates."""
        if not value.isdigit() or (len(value) > 1 and value.startswith(b"0")):
            return None
        number = int(value)
        return number - self.start if self.start <= number < self.stop else None

    def scan(
        self, offset: int, count: int, algorithm: str, target: bytes
    ) -> tuple[int | None, int]:
        """Hash candidates [offset, offset + count): ``(index of the preimage or None, tried)``."""
        new = ALGORITHMS[algorithm]
        first = self.start + offset
        for number in range(first, first + count):
            if new(b"%d" % number).digest() == target:
                return number - self.start, number - first + 1
        return None, count


@dataclass(frozen=True)
class WordSpace:
    """Every word over ``alphabet`` of ``min_length`` to ``max_length`` characters.

    Shorter words come first; words of one length are in the alphabet's order, like an odometer
    whose last wheel turns fastest. Candidate ``i`` is then ``i`` written in base
    ``len(alphabet)``, so any chunk starts anywhere without enumerating what comes before it.
    """

    alphabet: bytes = ALPHABETS["lower"].encode()
    min_length: int = 1
    max_length: int = 6

    def __post_init__(self) -> None:
        if len(self.alphabet) < 2 or len(set(self.alphabet)) != len(self.alphabet):
            raise ValueError("an alphabet needs at least 2 characters, each given once")
        if not 1 <= self.min_length <= self.max_length:
            raise ValueError(f"lengths {self.min_length}-{self.max_length} are not a range >= 1")

    @property
    def size(self) -> int:
        base = len(self.alphabet)
        return sum(base**length for length in range(self.min_length, self.max_length + 1))

    def describe(self) -> str:
        lengths = f"{self.min_length}" + (
            f"-{self.max_length}" if self.max_length > self.min_length else ""
        )
        return f"words of {lengths} characters over {self.alphabet.decode('latin-1')!r}"

    def _length_at(self, index: int) -> tuple[int, int]:
        """(length of candidate ``index``, index of the first candidate of that length)."""
        base, first = len(self.alphabet), 0
        for length in range(self.min_length, self.max_length + 1):
            if index < first + base**length:
                return length, first
            first += base**length
        raise IndexError(f"candidate {index} is past the end of a space of {self.size}")

    def _word(self, number: int, length: int) -> bytes:
        base, out = len(self.alphabet), bytearray(length)
        for position in range(length - 1, -1, -1):
            number, digit = divmod(number, base)
            out[position] = self.alphabet[digit]
        return bytes(out)

    def candidate(self, index: int) -> bytes:
        length, first = self._length_at(index)
        return self._word(index - first, length)

    def index_of(self, value: bytes) -> int | None:
        if not self.min_length <= len(value) <= self.max_length:
            return None
        if any(byte not in self.alphabet for byte in value):
            return None
        base, number = len(self.alphabet), 0
        for byte in value:
            number = number * base + self.alphabet.index(byte)
        first = sum(base**length for length in range(self.min_length, len(value)))
        return first + number

    def scan(
        self, offset: int, count: int, algorithm: str, target: bytes
    ) -> tuple[int | None, int]:
        """Hash candidates [offset, offset + count): ``(index of the preimage or None, tried)``.

        Words are hashed as a fixed prefix plus each of a precomputed list of suffixes, so the
        inner loop is one concatenation and one hash per candidate, with no base conversion.
        """
        new, tried, index, stop = ALGORITHMS[algorithm], 0, offset, offset + count
        while index < stop:
            length, first = self._length_at(index)
            end = min(stop, first + len(self.alphabet) ** length)
            suffix_length = _suffix_length(len(self.alphabet), length)
            suffixes = _suffixes(self.alphabet, suffix_length)
            while index < end:
                block, s0 = divmod(index - first, len(suffixes))
                s1 = min(len(suffixes), s0 + end - index)
                prefix = self._word(block, length - suffix_length)
                for suffix in itertools.islice(suffixes, s0, s1):
                    if new(prefix + suffix).digest() == target:
                        found = first + block * len(suffixes) + suffixes.index(suffix)
                        return found, tried + found - index + 1
                tried += s1 - s0
                index += s1 - s0
        return None, tried


def _suffix_length(base: int, length: int) -> int:
    """The longest suffix whose every value fits in ``_MAX_SUFFIXES`` (at least 1 character)."""
    return max(1, min(length, int(math.log(_MAX_SUFFIXES, base) + 1e-9)))


#: The suffix tables this process has built. A dict, not ``functools.cache``: this file's code
#: travels to the workers by value, and a cache wrapper pickles by name, which a worker (that
#: cannot import this file) could not look up.
_suffix_tables: dict[tuple[bytes, int], tuple[bytes, ...]] = {}


def _suffixes(alphabet: bytes, length: int) -> tuple[bytes, ...]:
    """Every word of ``length`` over ``alphabet`` in order; built once per worker process."""
    words = _suffix_tables.get((alphabet, length))
    if words is None:
        words = tuple(bytes(word) for word in itertools.product(alphabet, repeat=length))
        _suffix_tables[(alphabet, length)] = words
    return words


Space = NumberSpace | WordSpace


# -- the plan, the tasks and the task system ----------------------------------------------------


@dataclass(frozen=True)
class SearchPlan:
    """What to look for, where, and in what pieces: everything a chunk task needs."""

    space: Space
    algorithm: str
    target: bytes
    chunk_size: int = DEFAULT_CHUNK

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown hash {self.algorithm!r}: choose {', '.join(ALGORITHMS)}")
        digest_size = ALGORITHMS[self.algorithm]().digest_size
        if len(self.target) != digest_size:
            raise ValueError(
                f"a {self.algorithm} digest is {digest_size} bytes ({2 * digest_size} hex "
                f"digits), but the target has {len(self.target)}"
            )

    @property
    def chunks(self) -> int:
        return -(-self.space.size // self.chunk_size)

    def tasks(self, offset: int, count: int) -> list[ChunkTask]:
        """The tasks of up to ``count`` chunks from candidate ``offset`` on: made only as they
        are needed, since a space can hold more chunks than would fit in memory."""
        ends = range(offset, self.space.size, self.chunk_size)
        return [
            ChunkTask(self, start, min(self.chunk_size, self.space.size - start))
            for start in itertools.islice(ends, count)
        ]


@dataclass(frozen=True)
class ChunkResult:
    """What one chunk found: the preimage's index (None when not in this chunk), hashes tried."""

    offset: int
    count: int
    tried: int
    found: int | None = None


class ChunkTask(ts.Task):
    """Hash one chunk of the plan's space in a worker process."""

    def __init__(self, plan: SearchPlan, offset: int, count: int) -> None:
        super().__init__(name=f"{plan.algorithm}-chunk-{offset}")
        self.plan, self.offset, self.count = plan, offset, count

    def __call__(self) -> ChunkResult:
        plan = self.plan
        found, tried = plan.space.scan(self.offset, self.count, plan.algorithm, plan.target)
        return ChunkResult(self.offset, self.count, tried, found)


@dataclass
class SearchOutcome:
    """How a search ended; ``preimage`` is None when the whole space was searched in vain."""

    preimage: bytes | None
    index: int | None
    tried: int
    chunks_searched: int
    chunks_total: int
    chunks_cancelled: int | None = None  # known in the plain mode, where the application cancels


class _Tally:
    """The bookkeeping both modes share: results in, the next chunk out, and when to stop.

    Plain data only, so the task system holding it can be snapshotted by a journaling master.
    """

    def __init__(self, plan: SearchPlan) -> None:
        self.plan = plan
        self.next_offset = 0
        self.tried = self.searched = 0
        self.found: int | None = None

    def add(self, result: ChunkResult) -> None:
        self.tried += result.tried
        self.searched += 1
        if result.found is not None and self.found is None:
            self.found = result.found

    def next_tasks(self, count: int) -> list[ChunkTask]:
        """Up to ``count`` more chunks; none once the search is over."""
        if self.done:
            return []
        tasks = self.plan.tasks(self.next_offset, count)
        self.next_offset += sum(task.count for task in tasks)
        return tasks

    @property
    def done(self) -> bool:
        return self.found is not None or self.searched == self.plan.chunks

    def outcome(self, cancelled: int | None = None) -> SearchOutcome:
        preimage = None if self.found is None else self.plan.space.candidate(self.found)
        return SearchOutcome(
            preimage, self.found, self.tried, self.searched, self.plan.chunks, cancelled
        )


class ReverseHashSystem(ts.TaskSystem):
    """Runs on the master: a window of chunks in flight, complete as soon as one finds it.

    ``window`` chunks are sent at first (by default ``WINDOW_PER_WORKER`` per worker the master
    has) and one more each time one finishes. The master cancels whatever is still out when
    ``is_complete`` turns True, so finding the preimage early ends the search early.
    """

    def __init__(self, plan: SearchPlan, window: int | None = None) -> None:
        super().__init__()
        self.plan = plan
        self.window = window
        self.tally = _Tally(plan)
        self.error: BaseException | None = None

    def init_system(self, master: Any) -> None:
        """Nothing to prepare: the plan is all a chunk needs."""

    def generate_tasks(self, master: Any) -> list[ChunkTask]:
        window = self.window or WINDOW_PER_WORKER * max(2, master.cluster().get("workers", 0))
        return self.tally.next_tasks(window)

    def task_finished(
        self, master: Any, task: Any, result: Any, error: BaseException | None
    ) -> None:
        if error is not None:
            self.error = self.error or error
            return
        self.tally.add(result)
        if master is not None:
            master.push_tasks(self.tally.next_tasks(1))

    def is_complete(self, master: Any) -> bool:
        return self.error is not None or self.tally.done

    def gather_result(self, master: Any) -> tuple[SearchOutcome | None, BaseException | None]:
        if self.error is not None:
            return None, self.error
        return self.tally.outcome(), None


def search_system(
    app: ts.Application,
    plan: SearchPlan,
    progress: ProgressCallback | None = None,
    window: int | None = None,
) -> SearchOutcome:
    """Search with :class:`ReverseHashSystem` on the master; blocks until it ends."""
    return run_system(app, ReverseHashSystem(plan, window), rescaled(progress, plan.chunks))


def search_plain(
    app: ts.Application, plan: SearchPlan, progress: ProgressCallback | None = None, window: int = 8
) -> SearchOutcome:
    """Search by pushing chunk tasks from here, a window at a time; cancel the rest on a find."""
    tally = _Tally(plan)
    if progress is not None:
        progress(0, plan.chunks)  # the clock of the rate starts now, not at the first result
    pending = set(app.push_tasks(tally.next_tasks(window)))
    try:
        while pending:
            done, pending = concurrent.futures.wait(
                pending, return_when=concurrent.futures.FIRST_COMPLETED
            )
            for future in done:
                tally.add(future.result())  # re-raises a chunk's own error, traceback attached
            if progress is not None:
                progress(tally.searched, plan.chunks)
            if tally.found is not None:
                return tally.outcome(cancelled=cancel_all(pending))
            pending |= set(app.push_tasks(tally.next_tasks(len(done))))
        return tally.outcome(cancelled=0)
    finally:
        cancel_all(pending)  # an error or Ctrl-C leaves nothing running


# -- command line -------------------------------------------------------------------------------


@dataclass
class SearchReport:
    """What ``main`` prints at the end."""

    plan: SearchPlan
    outcome: SearchOutcome
    mode: str
    slaves: int
    workers: int
    seconds: float

    @property
    def verified(self) -> bool:
        """The preimage's digest, computed again here, is the target."""
        preimage, plan = self.outcome.preimage, self.plan
        return preimage is not None and ALGORITHMS[plan.algorithm](preimage).digest() == plan.target

    def lines(self) -> list[str]:
        plan, outcome = self.plan, self.outcome
        rate = outcome.tried / self.seconds if self.seconds > 0 else 0.0
        per_worker = rate / self.workers if self.workers else 0.0
        if outcome.preimage is None:
            found = "not found: the target's preimage is not in this search space"
        else:
            found = f"{_show(outcome.preimage)} (candidate {outcome.index:,})"
        cancelled = (
            "those in flight cancelled by the master, the rest never sent"
            if outcome.chunks_cancelled is None
            else f"{outcome.chunks_cancelled} cancelled in flight, the rest never sent"
        )
        rows = [
            ("target", f"{plan.algorithm} {plan.target.hex()}"),
            ("search space", f"{plan.space.describe()} ({plan.space.size:,} candidates)"),
            ("preimage", found),
            ("verified", "yes" if self.verified else "no"),
            ("mode", self.mode),
            (
                "chunks",
                f"{outcome.chunks_searched:,} searched of {outcome.chunks_total:,} "
                f"({plan.chunk_size:,} candidates each)"
                + ("" if outcome.chunks_searched == outcome.chunks_total else f"; {cancelled}"),
            ),
            (
                "hashes tried",
                f"{outcome.tried:,}"
                + ("" if outcome.chunks_searched == outcome.chunks_total else _UNCOUNTED),
            ),
            ("slaves", str(self.slaves)),
            ("workers", str(self.workers)),
            ("seconds", f"{self.seconds:.3f}"),
            ("rate", f"{rate:,.0f} hashes/s ({per_worker:,.0f} per worker)"),
        ]
        return aligned(rows)


_UNCOUNTED = " (in the chunks that reported; work of cancelled ones is not counted)"


def _show(value: bytes) -> str:
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return f"0x{value.hex()}"
    return repr(text) if text.isprintable() else f"0x{value.hex()}"


def _hex_digest(text: str) -> bytes:
    try:
        return bytes.fromhex(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a hex digest (e.g. 32 hex digits for md5)"
        ) from None


def _number_range(text: str) -> NumberSpace:
    try:
        start, stop = (int(part.replace("_", "")) for part in text.split(":"))
        return NumberSpace(start, stop)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a range: write START:STOP with 0 <= START < STOP (STOP excluded)"
        ) from None


def _lengths(text: str) -> tuple[int, int]:
    parts = text.split("-")
    try:
        low, high = (int(parts[0]), int(parts[-1])) if len(parts) <= 2 else (0, -1)
    except ValueError:
        low, high = 0, -1
    if not 1 <= low <= high:
        raise argparse.ArgumentTypeError(f"{text!r} is not a length or a range like 1-6")
    return low, high


def build_parser() -> argparse.ArgumentParser:
    """The sample's options; cluster options default to what ``taskswarm run`` set up."""
    parser = sample_parser(
        "reversemd5",
        "Find the input whose MD5 (or SHA-1, SHA-256) digest is the target, by hashing\n"
        "every candidate of a search space in chunks on a taskswarm cluster. The search\n"
        "stops, and cancels the chunks still out, as soon as one finds it.",
        "Without --target the target is the digest of --secret (default "
        f"{DEFAULT_SECRET!r}),\nfound in a few seconds by two workers. Exit status: 0 when "
        "the preimage is found\n(and its digest checked here), 1 when the space holds none.",
        [
            "taskswarm run examples/reversemd5.py",
            "taskswarm run examples/reversemd5.py --secret 31415926 --hash sha256",
            "taskswarm run examples/reversemd5.py --alphabet lower --length 1-5 \\",
            "    --target 6b3d43184271885b9fb260c59821d5e8",
            "python examples/reversemd5.py --secret Zz9 --alphabet alnum --length 3 --plain",
        ],
    )
    target = parser.add_argument_group("what to find")
    target.add_argument(
        "--target",
        type=_hex_digest,
        metavar="HEX",
        help="the digest to reverse, in hex (default: the digest of --secret)",
    )
    target.add_argument(
        "--secret",
        default=DEFAULT_SECRET,
        metavar="TEXT",
        help="without --target, hash this to make the target (default: %(default)s)",
    )
    target.add_argument(
        "--hash",
        dest="algorithm",
        choices=list(ALGORITHMS),
        default="md5",
        help="the digest algorithm (default: %(default)s)",
    )
    space = parser.add_argument_group("where to look")
    space.add_argument(
        "--range",
        type=_number_range,
        default=NumberSpace(),
        metavar="START:STOP",
        help="search the decimal numbers START..STOP-1 (default: 0:100000000)",
    )
    space.add_argument(
        "--alphabet",
        metavar="CHARS",
        help="search words over these characters instead of numbers; or one of: "
        + ", ".join(ALPHABETS),
    )
    space.add_argument(
        "--length",
        type=_lengths,
        default=(1, 6),
        metavar="MIN-MAX",
        help="word lengths for --alphabet, e.g. 4 or 1-6 (default: 1-6)",
    )
    run = parser.add_argument_group("how to run")
    run.add_argument(
        "--chunk",
        type=positive_int,
        default=DEFAULT_CHUNK,
        metavar="N",
        help="candidates per task (default: %(default)s)",
    )
    add_run_options(
        parser,
        run,
        plain="push plain tasks from this application and cancel the rest here, "
        "instead of running a task system on the master",
    )
    return parser


def plan_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> SearchPlan:
    """The plan the options describe; a contradiction is a usage error that says what to fix."""
    space: Space = args.range
    if args.alphabet is not None:
        chars = ALPHABETS.get(args.alphabet, args.alphabet)
        try:
            space = WordSpace(chars.encode("ascii"), *args.length)
        except UnicodeEncodeError:
            parser.error(f"--alphabet {args.alphabet!r}: use ASCII characters only")
        except ValueError as exc:
            parser.error(f"--alphabet {args.alphabet!r}: {exc}")
    target = args.target
    if target is None:
        target = ALGORITHMS[args.algorithm](args.secret.encode("utf-8")).digest()
        if space.index_of(args.secret.encode("utf-8")) is None:
            print(
                f"note: the secret {args.secret!r} is not in the search space "
                f"({space.describe()}); the search will end without finding it",
                file=sys.stderr,
            )
    try:
        return SearchPlan(space, args.algorithm, target, args.chunk)
    except ValueError as exc:
        parser.error(f"--target: {exc}")
        raise  # unreachable: parser.error exits


def main(argv: list[str] | None = None) -> int:
    """Search, report. Returns 0 when the preimage is found and verified, else 1."""
    parser = build_parser()
    args = parser.parse_args(argv)
    plan = plan_from(args, parser)

    with on_cluster(args) as cluster:
        cluster.warm_up()
        window = WINDOW_PER_WORKER * max(2, cluster.workers)  # the plain mode's own window
        search = functools.partial(search_plain, window=window) if args.plain else search_system
        outcome, seconds = cluster.timed(
            f"{plan.algorithm} search", lambda progress: search(cluster.app, plan, progress)
        )

    report = SearchReport(plan, outcome, cluster.mode, cluster.slaves, cluster.workers, seconds)
    print("\n".join(report.lines()))
    return 0 if report.verified else 1


if __name__ == "__main__":
    # Run as a file, the classes above live in __main__ and travel to the master and the
    # workers by value, and so does what they use of _common, this file's sibling module.
    sys.exit(main())
