"""One source per setting: the records of taskswarm.ops.config make the commands' options, the
settings file's keys, LocalCluster's keywords and the nodes' argv, and these agree."""

from __future__ import annotations

import dataclasses
import inspect
import os
import typing
from unittest import mock

import click
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskswarm import LocalCluster
from taskswarm.local import MASTER_KEYWORDS, NOT_KEYWORDS, OWN_KEYWORDS, SLAVE_KEYWORDS
from taskswarm.master.node import Master
from taskswarm.ops.cli import cli
from taskswarm.ops.config import MasterConfig, RunConfig, SlaveConfig, envvar, spec, to_argv
from taskswarm.ops.settings import parameter_names, settings_template
from taskswarm.slave.node import Slave

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

RECORDS = [MasterConfig, SlaveConfig, RunConfig]
FIELDS = [(r, f) for r in RECORDS for f in dataclasses.fields(r)]
IDS = [f"{r.COMMAND}.{f.name}" for r, f in FIELDS]
CHECKS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def command_params(record: type) -> list[click.Parameter]:
    """The command's parameters that are settings (not --env, not run's ARGS)."""
    command = cli.commands[record.COMMAND]
    return [p for p in command.params if p.expose_value and p.name != "args"]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: r.COMMAND)
def test_every_option_of_a_command_is_a_field_of_its_record_in_the_same_order(record):
    assert [p.name for p in command_params(record)] == [f.name for f in dataclasses.fields(record)]


@pytest.mark.parametrize(("record", "field"), FIELDS, ids=IDS)
def test_a_fields_option_has_its_default_help_and_environment_variable(record, field):
    (param,) = [p for p in command_params(record) if p.name == field.name]
    if field.default is not None and field.default != () and not spec(field).argument:
        assert param.default == field.default
    assert getattr(param, "help", None) == (spec(field).help or None)
    assert getattr(param, "hidden", False) == spec(field).hidden
    # click reads the explicit variable, or TASKSWARM_<COMMAND>_<NAME> (auto_envvar_prefix).
    auto = f"TASKSWARM_{record.COMMAND}_{param.name}".upper()
    assert envvar(record.COMMAND, field) == (param.envvar or auto)


@pytest.mark.parametrize(("record", "field"), FIELDS, ids=IDS)
def test_every_setting_is_in_the_settings_template(record, field):
    table = settings_template(cli).split(f"[{record.COMMAND}]\n", 1)[1].split("\n[", 1)[0]
    keys = {line.lstrip("# ").split(" =")[0] for line in table.splitlines() if " =" in line}
    names = parameter_names(cli.commands[record.COMMAND])
    if spec(field).hidden:
        assert not any(names.get(key) == field.name for key in keys)
    elif not spec(field).argument:  # slave's MASTER: a settings key (master-address), no line
        assert any(names.get(key) == field.name for key in keys), field.name


def test_the_settings_template_is_valid_toml_with_a_table_per_record():
    tables = tomllib.loads(settings_template(cli))
    assert {r.COMMAND for r in RECORDS} <= set(tables)


NODE_FIELDS = [(r, f) for r, f in FIELDS if r is not RunConfig]


@pytest.mark.parametrize(
    ("record", "field"), NODE_FIELDS, ids=[f"{r.COMMAND}.{f.name}" for r, f in NODE_FIELDS]
)
def test_local_cluster_takes_every_node_setting_or_says_why_not(record, field):
    keywords = set(inspect.signature(LocalCluster).parameters) | MASTER_KEYWORDS | SLAVE_KEYWORDS
    assert field.name in keywords or NOT_KEYWORDS.get(field.name)
    assert not (field.name in NOT_KEYWORDS and field.name in keywords - {"workers"})
    if field.name in OWN_KEYWORDS:
        assert field.name in inspect.signature(LocalCluster).parameters


def test_local_cluster_refuses_a_keyword_that_is_no_setting():
    with pytest.raises(TypeError, match="no_such_setting"):
        LocalCluster(slaves=1, workers=0, no_such_setting=1)


def test_local_cluster_keeps_its_public_keywords():
    public = set(inspect.signature(LocalCluster).parameters) | MASTER_KEYWORDS | SLAVE_KEYWORDS
    assert {
        "slaves", "workers", "scheduler", "strategy", "heartbeat", "slave_timeout", "curve",
        "start_timeout", "log_level", "system_log_level", "state_dir", "ipc", "stealing",
        "resource_wait", "resources", "dashboard", "worker_memory_limit",
    } <= public  # fmt: skip


#: Node keywords named or scaled otherwise than the setting they come from.
RENAMED = {
    "heartbeat": ("heartbeat_interval", 1),
    "max_message_mib": ("max_message_bytes", 1024 * 1024),
    "result_cap_mib": ("result_cap", 1024 * 1024),
}
#: Where a node made in Python differs from the command on purpose: a Master() serves no
#: dashboard and keeps no journal unless told; the command does both by default.
PYTHON_DEFAULTS = {"dashboard", "state_dir"}


@pytest.mark.parametrize(("record", "node"), [(MasterConfig, Master), (SlaveConfig, Slave)])
def test_a_node_made_in_python_has_the_commands_defaults(record, node):
    parameters = inspect.signature(node).parameters
    compared = 0
    for field in dataclasses.fields(record):
        name, scale = RENAMED.get(field.name, (field.name, 1))
        parameter = parameters.get(name)
        if parameter is None or parameter.default is parameter.empty:
            continue  # not a keyword of the node's, or one it must be given (bind, master)
        if field.name not in PYTHON_DEFAULTS:
            default = field.default * scale if scale != 1 else field.default
            assert parameter.default == default, field.name
            compared += 1
    assert compared >= 6


# -- argv made from a record reads back, through click, as the same record -----------------------

_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12).filter(
    lambda s: s not in ("-h", "--help")
)
_PATH = st.from_regex(r"/nonexistent/[a-z0-9._-]{1,12}", fullmatch=True)
_OVERRIDES = {
    "resources": st.none()
    | st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_.]{0,7}", fullmatch=True),
        st.floats(min_value=0, allow_nan=False),
        min_size=1,
    ),
    "worker_memory_limit": st.none()
    | st.sampled_from(["0", "auto", "2GiB", "512MiB", "0.5", "1.5GB", "123456789"]),
    "master_address": st.from_regex(r"tcp://[a-z0-9.]{1,12}:[0-9]{1,5}", fullmatch=True),
    "shared_memory": st.sampled_from(["off", "on", "256KiB", "1MiB", "4096", "0"]),
}


def _values(field: dataclasses.Field, hint: typing.Any) -> st.SearchStrategy:
    """Any value the field's option accepts, from its click type and the field's type."""
    s = spec(field)
    if field.name in _OVERRIDES:
        return _OVERRIDES[field.name]
    if isinstance(s.type, click.Choice):
        values: st.SearchStrategy = st.sampled_from(list(s.type.choices))
    elif isinstance(s.type, click.IntRange):
        values = st.integers(min_value=s.type.min, max_value=2**40)
    elif isinstance(s.type, click.FloatRange):
        values = st.floats(min_value=s.type.min, allow_nan=False)
    elif isinstance(s.type, click.Path):
        values = _PATH
    elif isinstance(field.default, bool):
        values = st.booleans()
    elif s.multiple:
        return st.lists(_TEXT, max_size=3).map(tuple)
    else:
        values = _TEXT
    optional = type(None) in typing.get_args(hint) and not s.required
    return st.none() | values if optional else values


def records(record: type) -> st.SearchStrategy:
    hints = typing.get_type_hints(record)
    return st.builds(
        record, **{f.name: _values(f, hints[f.name]) for f in dataclasses.fields(record)}
    )


def parse(argv: list[str]) -> dict[str, typing.Any]:
    """What `taskswarm ARGV` hands its command, with no environment or settings file."""
    name, *args = argv
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TASKSWARM")}
    with mock.patch.dict(os.environ, environ, clear=True):
        with cli.make_context("taskswarm", [name]) as group:
            command = cli.commands[name]
            with command.make_context(name, args, parent=group) as ctx:
                return {k: v for k, v in ctx.params.items() if k != "args"}


@CHECKS
@given(st.one_of(*(records(r) for r in RECORDS)))
def test_the_argv_of_a_record_parses_back_to_the_same_record(config):
    argv = to_argv(config)
    assert argv[0] == config.COMMAND
    assert type(config)(**parse(argv)) == config


def test_a_records_defaults_make_a_short_argv():
    config = SlaveConfig(master_address="tcp://127.0.0.1:5555", key_file="k")
    assert to_argv(config) == ["slave", "--key-file", "k", "--", "tcp://127.0.0.1:5555"]
    assert to_argv(MasterConfig(key_file="k", stealing=False)) == [
        "master",
        "--key-file",
        "k",
        "--no-stealing",
    ]


def test_a_required_setting_left_unset_is_refused_rather_than_left_out():
    with pytest.raises(ValueError, match="key_file"):
        to_argv(MasterConfig())
