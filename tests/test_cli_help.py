"""The ``ultraad`` command line for a newcomer: ``--help`` lists every command, every flag has a help text, and
importing the CLI (what ``--help`` does) loads neither MONAI (whose import pulls in the deploy SDK and holoscan) nor
torch."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest

from monai_ultraad import cli


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "monai_ultraad.cli", *args], capture_output=True, text=True,
                          timeout=120, check=False)


def test_help_lists_every_command_with_one_line_and_no_warning():
    done = _run("--help")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no holoscan stack-size RuntimeWarning, no INFO line
    commands = [name for name, _ in inspect.getmembers(cli.UltraADCLI, inspect.isfunction) if not name.startswith("_")]
    assert sorted(commands) == sorted(cli.COMMANDS)
    for name in commands:
        first_line = inspect.getdoc(getattr(cli.UltraADCLI, name)).split("\n")[0]
        assert f"    {name}  " in done.stdout
        assert first_line.split()[0] in done.stdout


@pytest.mark.parametrize("command", cli.COMMANDS)
def test_every_flag_has_a_help_text(command):
    parser = cli.build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]
    flags = [a for a in sub._actions if a.dest != "help"]
    params = [p for p in inspect.signature(getattr(cli.UltraADCLI, command)).parameters if p != "self"]
    assert sorted(a.dest for a in flags) == sorted(params)
    for action in flags:
        assert action.help and len(action.help.replace("(default: %(default)s)", "").strip()) > 10, action.dest
    done = _run(command, "--help")
    assert done.returncode == 0 and done.stderr == ""
    for p in params:
        assert f"--{p}" in done.stdout


def test_cli_import_loads_no_monai_deploy_holoscan_or_torch():
    code = ("import json, sys; import monai_ultraad.cli; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('monai', 'holoscan', 'torch'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(done.stdout) == []


def test_flags_parse_as_they_did_under_fire():
    """``--flag`` alone is True, ``--flag False`` is False, ``None`` is None; numbers are typed."""
    args = vars(cli.build_parser().parse_args(
        ["fewshot", "--data_dir", "d", "--allow_random_init", "--progress", "False", "--max_val_per_class", "None",
         "--shots", "2", "--lr", "0.01", "--views", "3"]))
    assert args["allow_random_init"] is True and args["progress"] is False and args["max_val_per_class"] is None
    assert args["shots"] == 2 and args["lr"] == 0.01 and args["views"] == 3 and args["zero_shot"] is False
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["fewshot"])  # --data_dir is required
