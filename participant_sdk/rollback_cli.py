"""`concord checkpoints` and `concord effects`: offline inspection of a participant's
data dir (read-only; safe beside a running participant)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from participant_sdk.checkpoints import (
    CheckpointError,
    LmdbCheckpointStore,
    checkpoints_dir,
)
from participant_sdk.effects import EffectError, LmdbEffectBacking, effects_dir

EXIT_NOT_FOUND = 1


def configure_checkpoints(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="checkpoints_command", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="list the visible checkpoints, oldest first")
    show = sub.add_parser("show", help="show one checkpoint: info and verified state")
    show.add_argument("id")
    for p in (listing, show):
        p.add_argument("--data-dir", required=True, help="the participant's data dir")
        p.add_argument("--json", action="store_true", help="print JSON")


def _open(data_dir: str) -> LmdbCheckpointStore:
    return LmdbCheckpointStore(checkpoints_dir(data_dir), readonly=True)


def _info(info: Any) -> dict[str, Any]:
    return {name: getattr(info, name) for name in info.__slots__}


def run_checkpoints(args: argparse.Namespace) -> int:
    try:
        store = _open(args.data_dir)
    except CheckpointError as error:
        print(f"concord checkpoints: {error}", file=sys.stderr)
        return EXIT_NOT_FOUND
    try:
        if args.checkpoints_command == "list":
            infos = store.list()
            problems = store.verify()
            if args.json:
                print(json.dumps({"checkpoints": [_info(i) for i in infos], "corrupt": problems}))
            else:
                print(f"{'ID':<32} {'GEN':>6} {'KIND':<5} {'BYTES':>9} {'TXN':<16} LABEL")
                for i in infos:
                    print(
                        f"{i.checkpoint_id:<32} {i.generation:>6} {i.kind:<5} "
                        f"{i.state_bytes:>9} {i.txn_id:<16} {i.label}"
                    )
                for problem in problems:
                    print(f"CORRUPT: {problem}")
            return 1 if problems else 0
        try:
            checkpoint = store.load(args.id)
        except CheckpointError as error:
            print(f"concord checkpoints: {error}", file=sys.stderr)
            return EXIT_NOT_FOUND
        state = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in checkpoint.state.items()}
        out = {"info": _info(checkpoint.info), "state": state}
        if checkpoint.replay is not None:
            out["replay"] = checkpoint.replay.to_json()
        print(json.dumps(out, indent=None if args.json else 2, default=str))
        return 0
    finally:
        store.close()


def configure_effects(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="effects_command", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="list the effect log")
    escalated = sub.add_parser("escalations", help="effects that need an operator")
    for p in (listing, escalated):
        p.add_argument("--data-dir", required=True, help="the participant's data dir")
        p.add_argument("--json", action="store_true", help="print JSON")


def run_effects(args: argparse.Namespace) -> int:
    try:
        backing = LmdbEffectBacking(effects_dir(args.data_dir), readonly=True)
    except EffectError as error:
        print(f"concord effects: {error}", file=sys.stderr)
        return EXIT_NOT_FOUND
    try:
        effects = backing.load()
    finally:
        backing.close()
    if args.effects_command == "escalations":
        effects = [e for e in effects if e.status.value == "ESCALATED"]
    if args.json:
        rows = [
            {
                "key": e.key,
                "name": e.name,
                "class": e.effect_class.value,
                "txn_id": e.txn_id,
                "generation": e.generation,
                "status": e.status.value,
                "attempts": e.attempts,
                "error": e.error,
            }
            for e in effects
        ]
        print(json.dumps(rows))
        return 0
    print(f"{'KEY':<34} {'STATUS':<18} {'TXN':<16} {'NAME':<30} ERROR")
    for e in effects:
        print(f"{e.key:<34} {e.status.value:<18} {e.txn_id:<16} {e.name:<30} {e.error}")
    return 0
