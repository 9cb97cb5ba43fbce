"""`concord sim`: run many seeds of the tier-1 simulator, or replay one with a trace.

Seeds run in worker processes (each seed is independent and deterministic, so the
result does not depend on how they are spread). The last line is always

    seeds: N  violations: V  simulated: Xs  wall: Ys

and a failing seed prints the command that replays it exactly. While it runs, progress
(seeds done, violations so far, an ETA) goes to stderr: one line rewritten in place on a
terminal, a line every 10 s otherwise (simulations/progress.py); `--quiet` turns it off.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

from coordinator.runtime.cli import unescaped
from simulations.planted import PLANTED
from simulations.progress import Progress
from simulations.world import Plant, SimConfig, run_seed

EXAMPLES_PER_SEED_MAX = 5


@dataclass(frozen=True, slots=True)
class SeedOutcome:
    seed: int
    violations: tuple[str, ...]
    simulated_ms: int


def configure_sim(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--seeds", type=_positive, default=100, metavar="N", help="run seeds 0..N-1 (default 100)"
    )
    which.add_argument("--seed", type=_non_negative, metavar="S", help="run (replay) seed S only")
    parser.add_argument(
        "--trace", action="store_true", help="with --seed: print one line per event"
    )
    parser.add_argument(
        "--first-seed", type=_non_negative, default=0, metavar="S", help="start at seed S"
    )
    parser.add_argument(
        "--jobs", type=_positive, default=os.cpu_count() or 1, help="worker processes"
    )
    parser.add_argument(
        "--plant", choices=sorted(PLANTED), help="plant a known bug (to see it caught)"
    )
    parser.add_argument("--coordinators", type=int, choices=(3, 5), default=3)
    parser.add_argument("--participants", type=_positive, default=3)
    parser.add_argument(
        "--quiet", action="store_true", help="no progress on stderr (only the results)"
    )


def run_sim(args: argparse.Namespace) -> int:
    if args.trace and args.seed is None:
        print("concord sim: --trace needs --seed S (one seed at a time)", file=sys.stderr)
        return 2
    config = SimConfig(coordinators=args.coordinators, participants=args.participants)
    if args.seed is not None:
        seeds = [args.seed]
    else:
        seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    started = time.monotonic()
    violations = simulated_ms = 0
    progress = None if args.quiet or args.trace else Progress(len(seeds), unescaped(sys.stderr))
    for done, outcome in enumerate(
        _outcomes(seeds, config, args.plant, args.jobs, args.trace), start=1
    ):
        simulated_ms += outcome.simulated_ms
        if outcome.violations:
            violations += len(outcome.violations)
            if progress is not None:
                progress.close()  # the failure's lines start on a clean line
            _report_failure(outcome, args)
        if progress is not None:
            progress.update(done, violations)
    if progress is not None:
        progress.close()
    wall_s = time.monotonic() - started
    simulated_s = simulated_ms / 1000
    print(f"seeds: {len(seeds)}  violations: {violations}  ", end="")
    print(f"simulated: {simulated_s:.0f}s  wall: {wall_s:.1f}s")
    return 1 if violations else 0


def _outcomes(
    seeds: list[int], config: SimConfig, plant: str | None, jobs: int, trace: bool
) -> Iterator[SeedOutcome]:
    if trace:
        result = run_seed(seeds[0], config, _plant(plant), trace=print)
        yield SeedOutcome(result.seed, tuple(result.violations), result.simulated_ms)
        return
    tasks = [(seed, config, plant) for seed in seeds]
    if jobs == 1 or len(seeds) == 1:
        yield from map(_run_one, tasks)
        return
    # Small chunks: the last one does not leave the other workers idle for long
    # (a seed takes about 0.1 s; handing out a chunk costs far less).
    chunksize = max(1, min(4, len(seeds) // (jobs * 4)))
    with multiprocessing.get_context("spawn").Pool(jobs, initializer=_worker_started) as pool:
        yield from pool.imap(_run_one, tasks, chunksize=chunksize)


def _worker_started() -> None:
    """In a new worker, once this module (hence the simulator) is imported: what is
    loaded now lives as long as the process, so the collector need not walk it."""
    gc.freeze()


def _run_one(task: tuple[int, SimConfig, str | None]) -> SeedOutcome:
    """One seed, with the cyclic garbage collector paused while it runs and a full
    collection after it. A run makes little cyclic garbage (its world is freed as a
    whole when it ends), but the collector's passes during a run walk its growing
    history again and again: about 5% of a run. (A worker freezes what it imported
    first, ``_worker_started``: the collection after each seed skips the modules.)"""
    seed, config, plant = task
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        result = run_seed(seed, config, _plant(plant))
    finally:
        if was_enabled:
            gc.enable()
    outcome = SeedOutcome(seed, tuple(result.violations), result.simulated_ms)
    del result
    gc.collect()
    return outcome


def _plant(name: str | None) -> Plant:
    return PLANTED[name] if name else Plant()


def _report_failure(outcome: SeedOutcome, args: argparse.Namespace) -> None:
    print(f"seed {outcome.seed}: {len(outcome.violations)} violations")
    for violation in outcome.violations[:EXAMPLES_PER_SEED_MAX]:
        print(f"  {violation}")
    if len(outcome.violations) > EXAMPLES_PER_SEED_MAX:
        print(f"  ... and {len(outcome.violations) - EXAMPLES_PER_SEED_MAX} more")
    replay = f"concord sim --seed {outcome.seed} --trace"
    if args.plant:
        replay += f" --plant {args.plant}"
    if args.coordinators != 3:
        replay += f" --coordinators {args.coordinators}"
    if args.participants != 3:
        replay += f" --participants {args.participants}"
    print(f"  replay: {replay}")


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value
