"""The files in deploy/ and the commands in docs/deploy.md stay in step with the command line.

Every ExecStart= of a systemd unit, the Containerfile's ENTRYPOINT + CMD and every `taskswarm`
command the guide shows is parsed by the real click command, with deploy/taskswarm.env in the
environment as systemd would give it, so an option renamed or removed in the CLI fails here
rather than at boot on a production machine. The units are also checked for what a cluster
relies on when a node stops (SIGTERM to the node alone, a stop timeout above the slave's --grace,
a restart after a failure only), run for real on loopback, and checked by `systemd-analyze`
itself where this machine has it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from conftest import free_port, wait_for
from taskswarm.dashboard import parse_address
from taskswarm.errors import TaskswarmError
from taskswarm.ops.cli import cli

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNITS = sorted(DEPLOY.glob("*.service"))
ENV_FILE = DEPLOY / "taskswarm.env"
CONTAINERFILE = DEPLOY / "Containerfile"
GUIDE = DEPLOY.parent / "docs" / "deploy.md"


# -- reading the files as systemd and a container builder would ---------------------------------


def logical_lines(text: str, comments: str) -> list[str]:
    """Lines with backslash continuations joined and comment lines dropped (both formats
    allow a comment line inside a continued line)."""
    lines, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith(tuple(comments)):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        if pending or line:
            lines.append(pending + line)
        pending = ""
    if pending:
        lines.append(pending)
    return lines


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of an EnvironmentFile= (values may be quoted)."""
    env = {}
    for line in logical_lines(path.read_text(), "#;"):
        name, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_]\w*", name.strip()), f"{path}: bad line {line!r}"
        value = value.strip()
        env[name.strip()] = " ".join(shlex.split(value)) if value[:1] in "'\"" else value
    return env


@dataclass
class Unit:
    path: Path
    settings: dict[str, dict[str, list[str]]]  # section -> key -> every value, in order

    @classmethod
    def read(cls, path: Path) -> Unit:
        settings: dict[str, dict[str, list[str]]] = {}
        section = None
        for line in logical_lines(path.read_text(), "#;"):
            if line.startswith("["):
                section = settings.setdefault(line.strip("[]"), {})
                continue
            key, sep, value = line.partition("=")
            assert section is not None and sep, f"{path}: {line!r} is not KEY=VALUE in a section"
            section.setdefault(key.strip(), []).append(value.strip())
        return cls(path, settings)

    def service(self, key: str) -> str | None:
        """The value of a [Service] setting; the last one wins, as in systemd."""
        values = self.settings.get("Service", {}).get(key)
        return values[-1] if values else None

    def environment(self) -> dict[str, str]:
        env = {}
        for name in self.settings["Service"].get("EnvironmentFile", []):
            assert Path(name.lstrip("-")).name == ENV_FILE.name, (
                f"{self.path.name} reads {name}; the example for it is deploy/{ENV_FILE.name}"
            )
            env.update(read_env_file(ENV_FILE))
        for assignments in self.settings["Service"].get("Environment", []):
            env.update(item.split("=", 1) for item in shlex.split(assignments))
        return env

    def exec_start(self, env: dict[str, str] | None = None) -> list[str]:
        """ExecStart= as systemd runs it: ${NAME} replaced inside a word, a lone $NAME split
        on whitespace (so an empty one is no word at all)."""
        values = self.settings["Service"].get("ExecStart", [])
        assert len(values) == 1, f"{self.path.name}: expected one ExecStart=, found {values}"
        env = self.environment() if env is None else env

        def value(name: str) -> str:
            assert name in env, f"{self.path.name} uses ${name}, which nothing defines"
            return env[name]

        argv: list[str] = []
        for word in shlex.split(values[0]):
            alone = re.fullmatch(r"\$(\w+)", word)
            if alone:
                argv.extend(value(alone.group(1)).split())
            else:
                argv.append(re.sub(r"\$\{(\w+)\}", lambda m: value(m.group(1)), word))
        argv[0] = argv[0].lstrip("-@:+!")
        return argv


def container_command() -> tuple[list[str], dict[str, str], dict[str, list[str]]]:
    """(ENTRYPOINT + CMD, ENV, every instruction's arguments) of the Containerfile."""
    instructions: dict[str, list[str]] = {}
    for line in logical_lines(CONTAINERFILE.read_text(), "#"):
        word, _, rest = line.partition(" ")
        instructions.setdefault(word.upper(), []).append(rest.strip())
    env: dict[str, str] = {}
    for rest in instructions.get("ENV", []):
        env.update(item.split("=", 1) for item in shlex.split(rest))

    def exec_form(name: str) -> list[str]:
        value = instructions[name][-1]
        assert value.startswith("["), f'{name} must use the exec form, ["..."], to get signals'
        return json.loads(value)

    return exec_form("ENTRYPOINT") + exec_form("CMD"), env, instructions


def guide_commands() -> list[list[str]]:
    """Every `taskswarm ...` command in the shell examples of docs/deploy.md, as argv: run by
    path (`/opt/taskswarm/bin/taskswarm status`), inside `sh -c '...'`, or as a container
    image's command (`taskswarm:0.1.0 slave ...`)."""
    group_options = {opt for param in cli.params for opt in param.opts}

    def commands_in(line: str) -> list[list[str]]:
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            return []  # not shell (a jq filter, a Python one-liner)
        found = []
        for i, word in enumerate(words):
            if any(c.isspace() for c in word):
                found += commands_in(word)  # sh -c '...', ssh HOST '...'
            runs = Path(word).name == "taskswarm" or word.startswith("taskswarm:")
            following = words[i + 1] if i + 1 < len(words) else ""
            if runs and (following in cli.commands or following in group_options):
                argv = ["taskswarm"]
                for rest in words[i + 1 :]:
                    if rest in {"|", "||", "&&", ";", ">", "2>"}:
                        break
                    argv.append(rest)
                found.append(argv)
        return found

    blocks = re.findall(r"```sh\n(.*?)```", GUIDE.read_text(), re.S)
    return [
        argv for block in blocks for line in logical_lines(block, "#") for argv in commands_in(line)
    ]


# -- parsing a command line with the real CLI -------------------------------------------------


def parse_command_line(
    argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> tuple[str, dict]:
    """Parse ``taskswarm ...`` with the real click commands and the given environment, as a
    node would at start-up; returns the command's name and its parsed options."""
    assert Path(argv[0]).name == "taskswarm", f"{argv[0]} does not run taskswarm"
    for name in [n for n in os.environ if n.startswith("TASKSWARM_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = argv[1:]
    position = next((i for i, a in enumerate(args) if a in cli.commands), None)
    assert position is not None, f"no taskswarm command in {argv}"
    name = args[position]
    try:
        with cli.make_context("taskswarm", args[: position + 1]) as group:
            command = cli.commands[name]
            with command.make_context(name, args[position + 1 :], parent=group) as ctx:
                return name, dict(ctx.params)
    except click.ClickException as exc:
        pytest.fail(f"taskswarm refuses {shlex.join(argv)}: {exc.format_message()}")


def check_node(name: str, params: dict) -> None:
    """What the command itself checks before it starts anything."""
    try:
        if name == "master" and not params["no_dashboard"]:
            parse_address(params["dashboard"])
    except TaskswarmError as exc:
        pytest.fail(f"taskswarm {name} would refuse to start: {exc}")


# -- the tests ---------------------------------------------------------------------------------


def test_deploy_has_a_master_unit_a_slave_unit_an_env_file_and_a_containerfile():
    assert {u.name for u in UNITS} >= {"taskswarm-master.service", "taskswarm-slave.service"}
    assert ENV_FILE.is_file() and CONTAINERFILE.is_file()


@pytest.mark.parametrize("path", UNITS, ids=[u.name for u in UNITS])
def test_every_unit_runs_a_command_line_the_cli_accepts(path, monkeypatch):
    unit = Unit.read(path)
    name, params = parse_command_line(unit.exec_start(), unit.environment(), monkeypatch)
    assert name in {"master", "slave"}, f"{path.name} runs `taskswarm {name}`"
    check_node(name, params)


def test_the_container_image_runs_a_command_line_the_cli_accepts(monkeypatch):
    argv, env, instructions = container_command()
    name, params = parse_command_line(argv, env, monkeypatch)
    check_node(name, params)
    assert re.fullmatch(r"python:3\.\d+-slim", instructions["FROM"][0]), instructions["FROM"]
    assert instructions["USER"][-1] not in {"0", "root"}, "the image must not run as root"


GUIDE_COMMANDS = guide_commands()


def test_the_guide_shows_the_commands_it_describes():
    shown = {argv[1] for argv in GUIDE_COMMANDS}
    assert {"keygen", "status", "run", "slave"} <= shown, shown


@pytest.mark.parametrize("argv", GUIDE_COMMANDS, ids=[shlex.join(a) for a in GUIDE_COMMANDS])
def test_every_command_in_the_guide_is_accepted_by_the_cli(argv, monkeypatch):
    # The guide runs them where the env file is set (or the image's ENV, which agrees with it).
    name, params = parse_command_line(argv, read_env_file(ENV_FILE), monkeypatch)
    check_node(name, params)


def test_every_variable_in_the_env_file_is_one_taskswarm_reads():
    read = {f"TASKSWARM_{p.name.upper()}" for p in cli.params if isinstance(p, click.Option)}
    for command_name, command in cli.commands.items():
        for param in command.params:
            if param.envvar:
                read.update([param.envvar] if isinstance(param.envvar, str) else param.envvar)
            elif isinstance(param, click.Option):
                read.add(f"TASKSWARM_{command_name.upper()}_{param.name.upper()}")
    unknown = sorted(set(read_env_file(ENV_FILE)) - read)
    assert not unknown, f"{ENV_FILE.name} sets variables no taskswarm command reads: {unknown}"


def seconds(value: str) -> float:
    """A systemd time span such as ``90``, ``60s``, ``1min 30s`` or ``500ms``, in seconds."""
    scale = {"": 1, "s": 1, "sec": 1, "ms": 0.001, "m": 60, "min": 60, "h": 3600}
    parts = re.findall(r"([\d.]+)\s*([a-z]*)", value)
    assert parts, f"cannot read the time span {value!r}"
    return sum(float(number) * scale[unit] for number, unit in parts)


@pytest.mark.parametrize("path", UNITS, ids=[u.name for u in UNITS])
def test_units_stop_the_node_gently_and_restart_it_after_a_failure(path, monkeypatch):
    unit = Unit.read(path)
    assert unit.service("KillSignal") == "SIGTERM"
    # SIGTERM to the node process alone: its worker processes must not be killed under it.
    assert unit.service("KillMode") == "mixed"
    assert unit.service("Restart") == "on-failure"
    assert unit.service("PrivateNetwork") in {None, "no", "false"}, "a node needs the network"
    assert unit.service("User") not in {None, "root"}, "nodes run as an unprivileged user"
    stop_timeout = seconds(unit.service("TimeoutStopSec") or "90s")
    name, params = parse_command_line(unit.exec_start(), unit.environment(), monkeypatch)
    if name == "slave":
        # A worker lost to the OOM killer is replaced by the slave; systemd must not stop it.
        assert unit.service("OOMPolicy") == "continue"
        assert stop_timeout > params["grace"], (
            f"{path.name}: TimeoutStopSec={stop_timeout:g}s would kill the workers before "
            f"the slave's --grace of {params['grace']:g}s is over"
        )
    if name == "master":
        state_dir = params["state_dir"]
        assert state_dir and not params["no_state_dir"], "the master must keep its journal"
        assert state_dir.endswith(unit.service("StateDirectory")), (
            f"{path.name}: --state-dir {state_dir} is not the unit's StateDirectory="
        )


def test_the_units_start_a_cluster_whose_slave_stops_cleanly_on_sigterm(nodes, key_file, tmp_path):
    """The units' command lines, with this machine's address, key and state directory in place
    of the example's, make a working cluster; SIGTERM (what `systemctl stop` sends) stops the
    slave with status 0, so Restart=on-failure leaves a stopped or drained slave stopped."""
    address = f"tcp://127.0.0.1:{free_port()}"
    site = {
        "TASKSWARM_MASTER": address,
        "TASKSWARM_MASTER_BIND": address,
        "TASKSWARM_KEY_FILE": key_file,
        "TASKSWARM_MASTER_DASHBOARD": "127.0.0.1:0",
        "TASKSWARM_SLAVE_WORKERS": "1",
    }
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TASKSWARM_")}
    processes = {}
    for path in UNITS:
        unit = Unit.read(path)
        env = {**unit.environment(), **site}
        argv = unit.exec_start(env)
        if "--state-dir" in argv:
            argv[argv.index("--state-dir") + 1] = str(tmp_path / path.stem)
        processes[argv[1]] = nodes.start(*argv[1:], env={**clean, **env})

    def slave_is_active():
        out = nodes.run("status", "--json", env={**clean, **site})
        assert out.returncode == 0, out.stderr
        return any(s["state"] == "active" for s in json.loads(out.stdout)["slaves"])

    wait_for(slave_is_active, timeout=30, interval=0.2)
    assert any((tmp_path / "taskswarm-master").iterdir()), "the master keeps no journal"
    for name in ("slave", "master"):
        processes[name].send_signal(signal.SIGTERM)
        _, stderr = processes[name].communicate(timeout=30)
        assert processes[name].returncode == 0, stderr


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed on this machine"
)


def units_with_a_real_executable(directory: Path) -> list[Path]:
    """Copies of the units whose ExecStart= names an executable that exists here (verify
    checks it), with everything else unchanged."""
    here = Path(sys.executable).with_name("taskswarm")
    executable = str(here if here.exists() else shutil.which("taskswarm") or sys.executable)
    copies = []
    for unit in UNITS:
        text = unit.read_text()
        command = Unit.read(unit).exec_start()[0]
        copy = directory / unit.name
        copy.write_text(text.replace(command, executable))
        copies.append(copy)
    return copies


@needs_systemd_analyze
def test_systemd_analyze_verify_finds_nothing_to_complain_about(tmp_path):
    copies = units_with_a_real_executable(tmp_path)
    out = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", *map(str, copies)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    complaints = [
        line
        for line in (out.stdout + out.stderr).splitlines()
        if any(copy.name in line for copy in copies)
    ]
    assert out.returncode == 0 and not complaints, out.stdout + out.stderr


@needs_systemd_analyze
def test_the_units_stay_hardened(tmp_path):
    copies = units_with_a_real_executable(tmp_path)
    for copy in copies:
        # Exposure 0-10 (as 0-100 here): an unhardened service scores about 9.6; ours about 1.4.
        out = subprocess.run(
            [SYSTEMD_ANALYZE, "security", "--offline=true", "--threshold=30", "--no-pager"]
            + [str(copy)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if "--offline" in out.stderr or "--threshold" in out.stderr:
            pytest.skip(f"this systemd-analyze cannot rate unit files offline: {out.stderr}")
        assert out.returncode == 0, f"{copy.name} lost its hardening:\n{out.stdout}"
