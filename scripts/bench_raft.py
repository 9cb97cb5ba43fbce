"""Applied entries/s and latency of a 3-node ReplicatedCoordinator cluster, one process
per node on 127.0.0.1 (the raw replication ceiling that `concord bench` also measures).

Usage: .venv/bin/python scripts/bench_raft.py [--seconds 3] [--inflight 1 200 1000]
       [--election-ms 150 300]

The node that wins the election runs each load level for ``--seconds`` with
``inflight`` proposals outstanding. "not applied" counts outcomes other than APPLIED
(by status); "terms" counts elections during the level. Numbers are for comparison
within one run. Implementation: coordinator/bench/raft.py.
"""

from __future__ import annotations

import argparse

from coordinator.bench import raft as bench_raft


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--inflight", type=int, nargs="+", default=[1, 200, 1000])
    parser.add_argument("--election-ms", type=int, nargs=2, default=None)
    args = parser.parse_args()
    election = tuple(args.election_ms) if args.election_ms else None
    print(
        f"{'inflight':>8} {'applied/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'terms':>5}  not applied"
    )
    for row in bench_raft.run(args.inflight, args.seconds, election):  # type: ignore[arg-type]
        print(
            f"{row.inflight:>8} {row.applied_per_s:>10.0f} {row.p50_ms:>8.2f} "
            f"{row.p99_ms:>8.2f} {row.terms:>5}  {row.not_applied or '-'}"
        )


if __name__ == "__main__":
    main()
