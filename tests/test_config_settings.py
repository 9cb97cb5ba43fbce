"""One configuration model: every `concord serve` setting is, by one name, a flag, a
config-file key and a CONCORD_* environment variable (coordinator/runtime/config.py),
with flags > environment > file > defaults; a bad value is one line and exit 2."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from coordinator.runtime import cli
from coordinator.runtime import config as node_config
from coordinator.runtime.config import SETTINGS, ConfigError, Setting, effective

STRONG = "0123456789abcdef0123"
NOT_SETTINGS = {"help", "config"}  # serve's flags that are not settings themselves


@pytest.fixture(autouse=True)
def _no_concord_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CONCORD_"):
            monkeypatch.delenv(name)


def _serve_parser() -> argparse.ArgumentParser:
    parser = cli.build_parser("serve")
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve: argparse.ArgumentParser = subparsers.choices["serve"]
    return serve


def _sample(setting: Setting, variant: int) -> tuple[Any, str]:
    """A valid value of ``setting`` as the file holds it, and as text (env, flag)."""
    n = variant + 1
    if setting.kind == "switch":
        return True, "true"
    if setting.kind in ("ms", "count"):
        return 10 * n, str(10 * n)
    if setting.kind == "address":
        return f"127.0.0.{n}:70{n:02d}", f"127.0.0.{n}:70{n:02d}"
    if setting.kind == "choice":
        choice = setting.choices[variant % len(setting.choices)]
        return choice, choice
    if setting.kind == "list":
        item = f"c{n}=127.0.0.{n}:7001,127.0.0.{n}:8001" if setting.name == "peers" else ""
        item = item or f"127.0.0.{n}:80{n:02d}"
        return [item], item
    return f"/v{n}/{setting.name}", f"/v{n}/{setting.name}"


def _toml(values: dict[str, Any]) -> str:
    def literal(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int):
            return str(value)
        if isinstance(value, list):
            return "[" + ", ".join(literal(v) for v in value) + "]"
        return f'"{value}"'

    return "".join(f"{key} = {literal(value)}\n" for key, value in values.items())


def _flag(setting: Setting, text: str) -> list[str]:
    return [setting.flag] if setting.kind == "switch" else [setting.flag, text]


def test_every_serve_flag_is_a_setting_with_a_file_key_and_a_variable() -> None:
    """A new serve flag cannot be forgotten in the file or the environment: the flags are
    made from the table, and each is a row of it."""
    flags = {
        action.dest: action.option_strings
        for action in _serve_parser()._actions
        if action.dest not in NOT_SETTINGS
    }
    assert flags, "serve has no flags?"
    assert set(flags) == {s.name for s in SETTINGS}
    for setting in SETTINGS:
        assert flags[setting.name] == [setting.flag]
        assert setting.env == "CONCORD_" + setting.name.upper()
        assert setting.flag.lstrip("-").replace("-", "_") in (setting.name, "peer")


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_each_setting_is_the_same_from_the_file_the_environment_and_a_flag(
    setting: Setting, tmp_path: Path
) -> None:
    in_file, text = _sample(setting, 1)
    path = tmp_path / "node.toml"
    path.write_text(_toml({setting.name: in_file}))
    parser = _serve_parser()
    from_file = effective(parser.parse_args([f"--config={path}"]), {})
    from_env = effective(parser.parse_args([]), {setting.env: text})
    from_flag = effective(parser.parse_args(_flag(setting, text)), {})
    from_config_env = effective(parser.parse_args([]), {"CONCORD_CONFIG": str(path)})
    value = from_file.values[setting.name]
    assert from_env.values[setting.name] == value
    assert from_flag.values[setting.name] == value
    assert from_config_env.values[setting.name] == value
    assert [from_file.sources[setting.name], from_env.sources[setting.name]] == ["file", "env"]
    assert from_flag.sources[setting.name] == "flag"


@pytest.mark.parametrize(
    "setting", [s for s in SETTINGS if s.kind != "switch"], ids=lambda s: s.name
)
def test_flags_beat_the_environment_which_beats_the_file(setting: Setting, tmp_path: Path) -> None:
    (file_value, _), (_, env_text), (_, flag_text) = (_sample(setting, v) for v in (0, 1, 2))
    path = tmp_path / "node.toml"
    path.write_text(_toml({setting.name: file_value}))
    parser = _serve_parser()
    expected = {
        "file": effective(parser.parse_args([f"--config={path}"]), {}),
        "env": effective(parser.parse_args([]), {setting.env: env_text}),
        "flag": effective(parser.parse_args(_flag(setting, flag_text)), {}),
    }
    env_over_file = effective(parser.parse_args([f"--config={path}"]), {setting.env: env_text})
    assert env_over_file.values[setting.name] == expected["env"].values[setting.name]
    everything = effective(
        parser.parse_args([f"--config={path}", *_flag(setting, flag_text)]),
        {setting.env: env_text},
    )
    assert everything.values[setting.name] == expected["flag"].values[setting.name]
    distinct = min(3, len(setting.choices)) if setting.choices else 3
    assert len({str(e.values[setting.name]) for e in expected.values()}) == distinct


def test_a_switch_set_in_the_file_is_turned_off_by_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text("insecure = true\ntrace_console = true\n")
    args = _serve_parser().parse_args([f"--config={path}"])
    got = effective(args, {"CONCORD_INSECURE": "false", "CONCORD_TRACE_CONSOLE": "0"})
    assert got.values["insecure"] is False and got.values["trace_console"] is False


def _node_file(tmp_path: Path, extra: str = "") -> Path:
    secret = tmp_path / "secret"
    secret.write_text(STRONG)
    secret.chmod(0o600)
    path = tmp_path / "c1.toml"
    path.write_text(
        'node_id = "c1"\nraft = "127.0.0.1:7001"\ngrpc = "127.0.0.1:8001"\n'
        f'data_dir = "{tmp_path / "data"}"\nsecret_file = "{secret}"\ninsecure = true\n{extra}'
    )
    return path


def test_a_whole_node_from_file_environment_and_flags(tmp_path: Path) -> None:
    path = _node_file(tmp_path, 'metrics = "127.0.0.1:9100"\nlog_level = "DEBUG"\n')
    args = _serve_parser().parse_args([f"--config={path}", "--metrics=127.0.0.1:9200"])
    loaded = node_config.load(args, {"CONCORD_LOG_FORMAT": "json", "CONCORD_METRICS": "x:1"})
    assert loaded.metrics == "127.0.0.1:9200"  # flag over environment over file
    assert (loaded.log_level, loaded.log_format) == ("DEBUG", "json")
    assert loaded.secret == STRONG and not loaded.secret_on_command_line


def test_the_secret_from_the_later_source_and_never_both_from_one(tmp_path: Path) -> None:
    path = _node_file(tmp_path)
    args = _serve_parser().parse_args([f"--config={path}"])
    other = "fedcba9876543210fedcba"
    assert node_config.load(args, {"CONCORD_SECRET": other}).secret == other  # env > file
    both = tmp_path / "both.toml"
    both.write_text(path.read_text() + f'secret = "{other}"\n')
    with pytest.raises(ConfigError, match="both secret and secret_file"):
        node_config.load(_serve_parser().parse_args([f"--config={both}"]), {})


BAD = [
    # (file extra, environment, flags, what the one line says)
    ('heartbeat_ms = "fast"\n', {}, [], "heartbeat_ms 'fast' is not a whole number"),
    ("", {"CONCORD_HEARTBEAT_MS": "30ms"}, [], "CONCORD_HEARTBEAT_MS '30ms' is not a whole"),
    ("", {"CONCORD_INSECURE": "maybe"}, [], "CONCORD_INSECURE 'maybe' is not a switch"),
    ("trace_console = 1\n", {}, [], "trace_console 1 is not a switch"),
    ("", {}, ["--metrics=localhost:99999"], "--metrics 'localhost:99999' is not HOST:PORT"),
    ('log_level = "LOUD"\n', {}, [], "log_level 'LOUD' is not one of"),
    ("audit_records_max = 0\n", {}, [], "audit_records_max 0 must be positive"),
    ('metricz = "127.0.0.1:9100"\n', {}, [], "did you mean metrics"),
    ("heartbeat_ms = \n", {}, [], "cannot read config file"),
    ('peers = "c2"\n', {}, [], "--peer 'c2' is not ID=RAFT_HOST:PORT,GRPC_HOST:PORT"),
    ("", {"CONCORD_JOIN": "nowhere"}, [], "CONCORD_JOIN 'nowhere' is not HOST:PORT"),
    ("", {"CONCORD_CONFIG": "/nonexistent/c1.toml"}, ["--node-id=c1"], "does not exist"),
]


@pytest.mark.parametrize(("extra", "environ", "flags", "message"), BAD)
def test_a_bad_value_is_one_line_and_exit_2(
    extra: str,
    environ: dict[str, str],
    flags: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = _node_file(tmp_path, extra)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    config_flag = [] if "CONCORD_CONFIG" in environ else [f"--config={path}"]
    assert cli.main(["serve", *config_flag, *flags]) == 2
    assert cli.main(["config", "check", str(path)]) == (2 if not flags else 0)
    errors = capsys.readouterr().err
    assert "Traceback" not in errors
    first = errors.splitlines()[0]
    assert message in first, errors
    assert first.startswith("concord: ")


def test_serve_with_a_bad_value_in_a_real_process_is_one_line(tmp_path: Path) -> None:
    path = _node_file(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCORD_")}
    done = subprocess.run(
        [sys.executable, "-m", "coordinator.runtime.cli", "serve", f"--config={path}"],
        env={**env, "CONCORD_ELECTION_TIMEOUT_MIN_MS": "-5"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done
    assert done.stderr.strip().splitlines() == [
        "concord: CONCORD_ELECTION_TIMEOUT_MIN_MS '-5' must be between 1 and 60000 ms"
    ]


def test_config_check_prints_each_setting_with_where_it_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _node_file(tmp_path, 'metrics = "127.0.0.1:9100"\n')
    monkeypatch.setenv("CONCORD_LOG_FORMAT", "json")
    assert cli.main(["config", "check", str(path)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"{path}: valid"
    assert '  metrics = "127.0.0.1:9100"  # file' in printed
    assert '  log_format = "json"  # env' in printed
    assert "  heartbeat_ms = 100  # default" in printed
    assert "  # secret: read from secret_file (not shown)" in printed
    assert "  # trace_otlp: not set" in printed
    assert STRONG not in "\n".join(printed)
    named = {
        line.split()[1 if line.lstrip().startswith("#") else 0].rstrip(":") for line in printed[1:]
    }
    assert {s.name for s in SETTINGS} <= named


def test_docs_operations_lists_every_setting_with_its_variable() -> None:
    page = (Path(__file__).resolve().parents[1] / "docs" / "operations.md").read_text()
    section = page.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    missing = [
        s.name
        for s in SETTINGS
        if f"`{s.name}`" not in section
        or (s.env not in section and not s.name.startswith("election_timeout_max"))
    ]
    assert not missing, f"docs/operations.md, Configuration: settings not listed: {missing}"


def test_one_file_for_every_node_the_member_list_naming_each(tmp_path: Path) -> None:
    members = [f"c{n}=127.0.0.1:700{n},127.0.0.1:800{n}" for n in (1, 2, 3)]
    path = _node_file(tmp_path, f"peers = {members!r}\n".replace("'", '"'))
    for n in (1, 2, 3):
        own = {
            "CONCORD_NODE_ID": f"c{n}",
            "CONCORD_RAFT": f"127.0.0.1:700{n}",
            "CONCORD_GRPC": f"127.0.0.1:800{n}",
        }
        loaded = node_config.load(_serve_parser().parse_args([f"--config={path}"]), own)
        assert [p.node_id for p in loaded.peers] == [f"c{m}" for m in (1, 2, 3) if m != n]
    elsewhere = {"CONCORD_NODE_ID": "c2", "CONCORD_GRPC": "127.0.0.1:8009"}
    with pytest.raises(ConfigError, match="names this node"):
        node_config.load(_serve_parser().parse_args([f"--config={path}"]), elsewhere)


def test_a_concord_variable_that_is_no_setting_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CONCORD_HEARTBEAT", "50")
    monkeypatch.setenv("CONCORD_COORDINATORS", "127.0.0.1:8001")  # the CLI's own
    assert cli.main(["config", "check", str(_node_file(tmp_path))]) == 0
    printed = capsys.readouterr().out
    assert (
        "  # CONCORD_HEARTBEAT (did you mean CONCORD_HEARTBEAT_MS?): no such setting, ignored"
        in printed.splitlines()
    )
    assert "CONCORD_COORDINATORS" not in printed


def test_join_from_a_later_source_wins_over_a_shared_member_list(tmp_path: Path) -> None:
    members = [f"c{n}=127.0.0.1:700{n},127.0.0.1:800{n}" for n in (1, 2, 3)]
    path = _node_file(tmp_path, f"peers = {members!r}\n".replace("'", '"'))
    new_node = {
        "CONCORD_NODE_ID": "c4",
        "CONCORD_RAFT": "127.0.0.1:7004",
        "CONCORD_GRPC": "127.0.0.1:8004",
        "CONCORD_JOIN": "127.0.0.1:8001",
    }
    loaded = node_config.load(_serve_parser().parse_args([f"--config={path}"]), new_node)
    assert loaded.join == ("127.0.0.1:8001",) and loaded.peers == ()
    both = tmp_path / "both.toml"
    both.write_text(path.read_text() + 'join = ["127.0.0.1:8001"]\n')
    with pytest.raises(ConfigError, match="both peers and join"):
        node_config.load(_serve_parser().parse_args([f"--config={both}"]), {})
