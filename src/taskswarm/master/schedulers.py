"""How the master gets its scheduler: by plugin name, with the scheduler's own options.

A scheduler plugin may take settings of its own (``--scheduler-option KEY=VALUE``; the engine
schedulers' ``engine`` is one, which ``--engine`` spells). The master does not interpret them:
it hands them to the scheduler (``master.scheduler_options``, read in ``setup``) and refuses a
key the scheduler does not name in its ``options``, so a misspelt one is an error, not ignored.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import ConfigurationError
from ..scheduling import available, load_plugin
from ..scheduling.contracts import SchedulerContract

__all__ = ["load_scheduler"]


def load_scheduler(
    scheduler: str, strategy: str, prefetch: int, options: Mapping[str, str] | None = None
) -> SchedulerContract:
    """A scheduler and its strategy, by their plugin names (``taskswarm.schedulers`` and
    ``taskswarm.strategies``). ``options`` are the scheduler's own, read by it in ``setup``;
    one it does not name in its ``options`` is a configuration error."""
    strategy_obj = load_plugin("taskswarm.strategies", strategy)()
    made: SchedulerContract = load_plugin("taskswarm.schedulers", scheduler)(strategy_obj, prefetch)
    unknown = sorted(set(options or ()) - set(made.options))
    if unknown:
        takers = [
            name
            for name in available("taskswarm.schedulers")
            if unknown[0] in getattr(load_plugin("taskswarm.schedulers", name), "options", ())
        ]
        raise ConfigurationError(
            f"the {scheduler!r} scheduler takes no option {unknown[0]!r} "
            f"(its options: {', '.join(sorted(made.options)) or 'none'}); "
            + (
                "use a scheduler that takes it: "
                + " or ".join(f"--scheduler {name}" for name in takers)
                if takers
                else "no installed scheduler takes it"
            )
        )
    return made
