"""`concord certs init|issue|check`: a development CA and the certificates of a cluster.

    concord certs init DIR --cluster demo --nodes c1,c2,c3 --participants flight,hotel \
        --operators alice --clients app
    concord certs issue DIR --participant payment
    concord certs check DIR

Exit codes: 0 done, 2 a user mistake (one line on stderr).
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from coordinator.runtime.cli import fail
from coordinator.security.certs import CertError, describe, init_dir, issue
from coordinator.security.identity import Identity, IdentityError, Role

EXPIRY_WARN_DAYS = 30
ROLE_FLAGS = {
    Role.NODE: "nodes",
    Role.PARTICIPANT: "participants",
    Role.OPERATOR: "operators",
    Role.CLIENT: "clients",
}


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def configure_certs(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    init = actions.add_parser("init", help="make a CA and one certificate per identity")
    init.add_argument("dir", type=Path)
    init.add_argument("--cluster", default="concord", help="the cluster's name (default concord)")
    for role, flag in ROLE_FLAGS.items():
        init.add_argument(f"--{flag}", default="", help=f"comma-separated {role.value} names")
    add = actions.add_parser("issue", help="add one identity to a directory made by init")
    add.add_argument("dir", type=Path)
    group = add.add_mutually_exclusive_group(required=True)
    for role in Role:
        group.add_argument(f"--{role.value}", metavar="NAME")
    check = actions.add_parser("check", help="list the certificates of a directory and expiry")
    check.add_argument("dir", type=Path)


def run_certs(args: argparse.Namespace) -> int:
    try:
        if args.action == "init":
            return _init(args)
        if args.action == "issue":
            return _issue(args)
        return _check(args.dir)
    except (CertError, IdentityError, OSError) as error:
        return fail(str(error), prog="concord certs")


def _init(args: argparse.Namespace) -> int:
    identities = [
        Identity(args.cluster, role, name)
        for role, flag in ROLE_FLAGS.items()
        for name in _names(getattr(args, flag))
    ]
    if not identities:
        raise CertError("name at least one identity (--nodes, --participants, ...)")
    issued = init_dir(args.dir, args.cluster, identities)
    print(f"CA for cluster {args.cluster!r}: {args.dir / 'ca.pem'} (keep ca.key offline)")
    for item in issued:
        print(f"  {item.identity.role.value:<11} {item.identity.name:<20} {item.cert.name}")
    return 0


def _issue(args: argparse.Namespace) -> int:
    [(role, name)] = [(r, getattr(args, r.value)) for r in Role if getattr(args, r.value)]
    infos = describe(args.dir)
    clusters = {i.identity.cluster for i in infos if i.identity is not None}
    if len(clusters) != 1:
        raise CertError(f"{args.dir} does not hold the certificates of one cluster")
    item = issue(args.dir, Identity(clusters.pop(), role, name))
    print(f"{item.identity}: {item.cert}")
    return 0


def _check(directory: Path) -> int:
    now = dt.datetime.now(dt.UTC)
    for info in describe(directory):
        left = (info.not_after - now).days
        who = str(info.identity) if info.identity else info.subject
        note = "EXPIRED" if left < 0 else ("expires soon" if left < EXPIRY_WARN_DAYS else "")
        print(f"{info.path.name:<32} {who:<48} until {info.not_after:%Y-%m-%d} {note}".rstrip())
    return 0
