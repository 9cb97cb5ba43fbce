"""Tier 2: real `concord serve` processes and participant processes on 127.0.0.1 under
real faults (SIGKILL, SIGSTOP, partitions through fault-injecting TCP proxies), a
Jepsen-style history and checkers. See docs/reliability.md.
"""
