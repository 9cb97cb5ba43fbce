"""Backups (coordinator/replication/backup.py): taken from a leader, read back, seeded
into a new data dir that a node starts from; and the bad inputs (a file that is no
backup, a damaged one, another format version, a data dir that is not empty), each a
one-line error of `concord restore` (exit 2), never a traceback."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from coordinator.replication import backup as backups
from coordinator.replication.backup import BackupError, capture, decode, encode, seed_data_dir
from coordinator.replication.node import NodeAddress, ProposeStatus, ReplicatedCoordinator
from coordinator.runtime.cli import EXIT_USAGE, main
from tests.replication.helpers import (
    addresses,
    begin,
    config,
    propose_wait,
    round_ids,
    wait_until,
)


@pytest.fixture(scope="module")
def taken(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A backup file's bytes, taken from a one-node cluster that began t0..t4."""
    root = tmp_path_factory.mktemp("source")
    with ReplicatedCoordinator(config(addresses(1), "n0", root)) as node:
        wait_until(node.leader_ready, "n0 to lead")
        for i in range(5):
            assert propose_wait(node, begin(f"t{i}")).status is ProposeStatus.APPLIED
        return encode(capture(node))


def test_a_new_node_starts_from_a_restored_data_dir_and_continues_the_log(
    taken: bytes, tmp_path: Path
) -> None:
    backup = decode(taken)
    assert [m.node_id for m in backup.members] == ["n0"]
    members = (NodeAddress(node_id="r0", raft=addresses(1)[0].raft, grpc="127.0.0.1:0"),)
    seed_data_dir(backup, tmp_path / "r0", "r0", members)
    with ReplicatedCoordinator(config(members, "r0", tmp_path)) as node:
        wait_until(node.leader_ready, "r0 to lead")
        assert round_ids(node) == {f"t{i}" for i in range(5)}
        assert node.status().applied_index > backup.applied_index
        result = propose_wait(node, begin("after"))
        assert result.status is ProposeStatus.APPLIED
        assert result.index > backup.applied_index
        assert round_ids(node) == {*(f"t{i}" for i in range(5)), "after"}


def _with_header(data: bytes, **changes: object) -> bytes:
    """``data`` with its header changed and its checksum made right again."""
    start = len(backups.MAGIC) + 4
    length = int.from_bytes(data[len(backups.MAGIC) : start], "big")
    header = json.loads(data[start : start + length])
    header.update(changes)
    raw = json.dumps(header).encode()
    body = backups.MAGIC + len(raw).to_bytes(4, "big") + raw + data[start + length : -32]
    return body + hashlib.sha256(body).digest()


def test_a_backup_of_format_1_is_still_read(taken: bytes, tmp_path: Path) -> None:
    """Format 1 differs only in how its rounds are pickled, which a snapshot of format
    1 shows is still read (tests/replication/test_snapshot_pickle.py)."""
    assert decode(taken).format == backups.BACKUP_FORMAT == 2
    backup = decode(_with_header(taken, format=1))
    assert backup.format == 1
    members = (NodeAddress(node_id="r0", raft=addresses(1)[0].raft, grpc="127.0.0.1:0"),)
    seed_data_dir(backup, tmp_path / "r0", "r0", members)
    with ReplicatedCoordinator(config(members, "r0", tmp_path)) as node:
        wait_until(node.leader_ready, "r0 to lead")
        assert round_ids(node) == {f"t{i}" for i in range(5)}


def _flipped(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1 :]


BAD_FILES = {
    "not a backup": (lambda data: b"PK\x03\x04" + data, "is not a concord backup file"),
    "a flipped bit": (_flipped, "is damaged (its SHA-256 checksum does not match"),
    "truncated": (lambda data: data[:-100], "is damaged"),
    "another format": (
        lambda data: _with_header(data, format=3),
        "is backup format 3; this concord reads formats 1, 2 only",
    ),
    "a header that lies": (lambda data: _with_header(data, applied_index=1), "does not match"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_restoring_a_bad_file_is_one_line_exit_2_and_writes_nothing(
    case: str, taken: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spoil, message = BAD_FILES[case]
    path = tmp_path / "bad.backup"
    path.write_bytes(spoil(taken))
    data_dir = tmp_path / "c1"
    code = main(
        [
            "restore",
            str(path),
            f"--data-dir={data_dir}",
            "--node-id=c1",
            "--raft=127.0.0.1:7001",
            "--grpc=127.0.0.1:8001",
            "--peer=c2=127.0.0.1:7002,127.0.0.1:8002",
            "--peer=c3=127.0.0.1:7003,127.0.0.1:8003",
        ]
    )
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert err.count("\n") == 1 and message in err, err
    assert "Traceback" not in err
    assert not data_dir.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.backup"]


def test_restore_refuses_a_data_dir_that_is_not_empty(
    taken: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "good.backup"
    path.write_bytes(taken)
    data_dir = tmp_path / "c1"
    data_dir.mkdir()
    (data_dir / "something").write_text("kept")
    code = main(
        [
            "restore",
            str(path),
            f"--data-dir={data_dir}",
            "--node-id=c1",
            "--raft=127.0.0.1:7001",
            "--grpc=127.0.0.1:8001",
        ]
    )
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert err.count("\n") == 1 and "is not empty" in err, err
    assert [p.name for p in data_dir.iterdir()] == ["something"]


def test_restore_names_a_missing_file_and_missing_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "none.backup"
    assert main(["restore", str(missing), f"--data-dir={tmp_path / 'c1'}"]) == EXIT_USAGE
    assert "missing --node-id, --raft, --grpc" in capsys.readouterr().err
    flags = ["--node-id=c1", "--raft=127.0.0.1:7001", "--grpc=127.0.0.1:8001"]
    assert main(["restore", str(missing), f"--data-dir={tmp_path / 'c1'}", *flags]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot read {missing}" in err, err


def test_restore_wants_the_members_not_join(
    taken: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "good.backup"
    path.write_bytes(taken)
    settings = tmp_path / "node.toml"
    settings.write_text('join = ["127.0.0.1:8001"]\n')
    flags = ["--node-id=c4", "--raft=127.0.0.1:7004", "--grpc=127.0.0.1:8004"]
    code = main(
        ["restore", str(path), f"--config={settings}", f"--data-dir={tmp_path / 'c4'}", *flags]
    )
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert err.count("\n") == 1 and "not join" in err, err
    assert not (tmp_path / "c4").exists()


def test_seeding_checks_the_member_list(taken: bytes, tmp_path: Path) -> None:
    backup = decode(taken)
    members = addresses(1)
    with pytest.raises(BackupError, match="is not among the members"):
        seed_data_dir(backup, tmp_path / "x", "x", members)
    assert not (tmp_path / "x").exists()


def test_backup_refuses_to_overwrite_and_names_an_unreachable_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONCORD_TLS_DIR", raising=False)
    existing = tmp_path / "old.backup"
    existing.write_bytes(b"kept")
    assert main(["backup", f"--out={existing}"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists; remove it or choose another --out" in err, err
    assert existing.read_bytes() == b"kept"
    port = addresses(1)[0].raft.rsplit(":", 1)[1]  # free: nothing listens there
    out = tmp_path / "new.backup"
    code = main(["backup", f"--out={out}", f"--coordinators=127.0.0.1:{port}"])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert err.count("\n") == 1 and "no leader gave a backup" in err, err
    assert not out.exists()
