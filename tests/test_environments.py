"""Environments: `taskswarm init DIR`, `--env DIR` with a plugin from DIR/plugins, `config show`."""

from __future__ import annotations

import json
import os
import stat
import textwrap
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

import taskswarm as ts
from conftest import free_port, wait_for
from taskswarm.ops.cli import cli
from taskswarm.ops.settings import COMMANDS
from taskswarm.protocol.keys import load_keys

PLUGIN = textwrap.dedent(
    """
    from taskswarm.plugins import register
    from taskswarm.scheduling.strategies import LoadStrategy


    @register("strategy", "from-a-plugin")
    class FromAPlugin(LoadStrategy):
        '''The load strategy under a name only this environment's plugin gives.'''
    """
)


def make_env(nodes, tmp_path: Path) -> Path:
    env = tmp_path / "env"
    out = nodes.run("init", str(env))
    assert out.returncode == 0, out.stderr
    assert f"taskswarm master --env {env}" in out.stdout
    return env


def set_settings(env: Path, command: str, **values: str) -> None:
    """Change lines of one table of the settings file, as a person would in an editor."""
    lines, table = (env / "taskswarm.toml").read_text().splitlines(), None
    for i, line in enumerate(lines):
        if line.startswith("["):
            table = line.strip("[]")
        key = line.lstrip("# ").split(" =")[0]
        if table == command and key in values and " =" in line:
            lines[i] = f"{key} = {json.dumps(values[key])}"
    (env / "taskswarm.toml").write_text("\n".join(lines) + "\n")


def test_init_makes_the_layout_with_every_setting_and_a_private_key(nodes, tmp_path):
    env = make_env(nodes, tmp_path)
    for folder in ("plugins", "logs", "state"):
        assert (env / folder).is_dir()
    assert stat.S_IMODE((env / "cluster.key").stat().st_mode) == 0o600
    settings = tomllib.loads((env / "taskswarm.toml").read_text())
    assert settings["master"]["key-file"] == "cluster.key"
    assert settings["master"]["strategy"] == "load"
    text = (env / "taskswarm.toml").read_text()
    for command in COMMANDS:  # every option of every command is there, set or commented
        for option in cli.commands[command].params:
            if option.param_type_name == "option" and not option.hidden and option.name != "env":
                key = max(option.opts, key=len).lstrip("-")
                assert f"{key} =" in text, f"[{command}] {key} is missing"


def test_init_will_not_overwrite_an_environment(nodes, tmp_path):
    env = make_env(nodes, tmp_path)
    again = nodes.run("init", str(env))
    assert again.returncode == 1
    assert "exists already" in again.stderr and "--force" in again.stderr
    assert "Traceback" not in again.stderr


@pytest.mark.timeout(90)
def test_a_master_with_env_selects_a_strategy_from_the_plugins_folder(nodes, tmp_path):
    env = make_env(nodes, tmp_path)
    (env / "plugins" / "from_a_plugin.py").write_text(PLUGIN)
    address = f"tcp://127.0.0.1:{free_port()}"
    set_settings(env, "master", bind=address, strategy="from-a-plugin", dashboard="127.0.0.1:0")
    nodes.start("master", "--env", str(env))
    nodes.start("slave", address, "--env", str(env), "--workers", "1")

    def strategy() -> str | None:
        out = nodes.run("status", "--master", address, "--env", str(env), "--json")
        if out.returncode != 0:
            return None
        info = json.loads(out.stdout)
        active = [s for s in info["slaves"] if s["state"] == "active"]
        return info["master"]["strategy"] if active else None

    assert wait_for(strategy, timeout=30, interval=0.2) == "from-a-plugin"
    with ts.Application(address, load_keys(str(env / "cluster.key"))) as app:
        assert app.submit(pow, 3, 4).result(timeout=30) == 81
    log = (env / "logs" / "master.log").read_text()
    assert "plugin from_a_plugin.py loaded" in log
    assert any((env / "state").iterdir()), "the master keeps its journal in the environment"


def test_a_broken_plugin_is_one_line_naming_the_file(nodes, tmp_path):
    env = make_env(nodes, tmp_path)
    (env / "plugins" / "broken.py").write_text("import no_such_module_here\n")
    out = nodes.run("master", "--env", str(env), timeout=30)
    assert out.returncode == 1
    assert "broken.py failed to load" in out.stderr and "no_such_module_here" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_missing_environment_says_how_to_make_one(nodes, tmp_path):
    out = nodes.run("slave", "tcp://127.0.0.1:1", "--env", str(tmp_path / "nowhere"))
    assert out.returncode == 1
    assert "taskswarm init" in out.stderr and "Traceback" not in out.stderr


def test_config_show_tells_each_settings_value_and_source(nodes, tmp_path):
    env = make_env(nodes, tmp_path)
    set_settings(env, "master", strategy="two-choices")
    environ = {**os.environ, "TASKSWARM_MASTER_PREFETCH": "7"}
    out = nodes.run("config", "show", "--env", str(env), "--json", env=environ)
    assert out.returncode == 0, out.stderr
    rows = {(r["command"], r["name"]): r for r in json.loads(out.stdout)}
    assert rows["master", "strategy"]["value"] == "two-choices"
    assert rows["master", "strategy"]["source"] == "file"
    assert rows["master", "prefetch"] == {
        "command": "master", "name": "prefetch", "value": "7",
        "source": "env TASKSWARM_MASTER_PREFETCH",
    }  # fmt: skip
    assert rows["master", "key-file"]["value"] == str(env / "cluster.key")  # relative to it
    assert rows["slave", "grace"]["source"] == "file"

    table = nodes.run("config", "show", "--env", str(env), env=environ)
    assert table.returncode == 0 and "two-choices" in table.stdout


def test_paths_in_a_settings_file_are_relative_to_it(nodes, tmp_path, key_file):
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "taskswarm.toml").write_text('[status]\nkey-file = "my.key"\n')
    out = nodes.run("--config", str(folder / "taskswarm.toml"), "config", "show", "--json")
    rows = {(r["command"], r["name"]): r for r in json.loads(out.stdout)}
    assert rows["status", "key-file"]["value"] == str(folder / "my.key")


def test_a_setting_is_named_as_its_option_and_a_typo_is_refused(nodes, tmp_path):
    config = tmp_path / "taskswarm.toml"
    config.write_text('[status]\nmaster = "tcp://127.0.0.1:7777"\njson = true\n')
    out = nodes.run("--config", str(config), "config", "show", "--json")
    assert out.returncode == 0, out.stderr
    rows = {(r["command"], r["name"]): r for r in json.loads(out.stdout)}
    assert rows["status", "master"]["value"] == "tcp://127.0.0.1:7777"
    assert rows["status", "json"] == {
        "command": "status", "name": "json", "value": True, "source": "file"
    }  # fmt: skip

    config.write_text('[master]\nstrategy = "load"\nworkres = 4\n')
    typo = nodes.run("--config", str(config), "master")
    assert typo.returncode == 2
    assert "has no setting 'workres'" in typo.stderr and "config show" in typo.stderr
    assert "Traceback" not in typo.stderr


def test_the_slaves_master_argument_can_come_from_the_settings_file(nodes, tmp_path, key_file):
    config = tmp_path / "taskswarm.toml"
    config.write_text('[slave]\nmaster-address = "not-an-address"\n')
    out = nodes.run("--config", str(config), "slave", "--key-file", key_file, timeout=30)
    assert out.returncode != 0
    assert "not-an-address" in out.stderr and "Traceback" not in out.stderr
