"""The command line as the README tells it: the synopsis matches the parsers, `emm --version`,
the argument types, and the profile format's example."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import re
import subprocess
from pathlib import Path
from typing import Any, NoReturn

import pytest

from cli.args import bounded, host_port, seconds
from cli.main import SERVICES, build_parser
from devservices.processes import emm_command
from emm.errors import ConfigError
from emm.profiles import parse_profile

pytestmark = pytest.mark.timeout(30)

README = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]*")
Synopsis = dict[tuple[str, ...], tuple[set[str], list[str]]]


def readme_synopsis() -> Synopsis:
    """The "Command line" block: per command path (`("profiles", "show")`), its flags and
    the words after the path (where positionals show)."""
    section = README.split("\n## Command line\n", 1)[1]
    block = section.split("```", 2)[1]
    commands: Synopsis = {}
    path: tuple[str, ...] = ()
    for line in block.strip("\n").splitlines():
        if not line.startswith(" "):
            words = line.split()
            assert words[0] == "emm", line
            rest = words[1:]
            path = ()
            while rest and re.fullmatch(r"[a-z][a-z-]*", rest[0]):
                path, rest = (*path, rest[0]), rest[1:]
            assert path not in commands, f"{path} twice in the synopsis"
            commands[path] = (set(), [])
        commands[path][0].update(FLAG.findall(line))
        commands[path][1].extend(w for w in line.split() if not w.startswith(("emm", "-", "[")))
    return commands


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def service_parser(name: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The parser a service's `main` builds (caught when it parses)."""

    def capture(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> NoReturn:
        raise _Captured(self)

    module = importlib.import_module(f"{name}.__main__")
    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", capture)
        patch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
        with pytest.raises(_Captured) as caught:
            module.main([])
    return caught.value.parser


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {
        option
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }


def _positionals(parser: argparse.ArgumentParser) -> list[str]:
    return [
        str(a.metavar or a.dest)
        for a in parser._actions
        if not a.option_strings and not isinstance(a, argparse._SubParsersAction)
    ]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def parsers_synopsis(monkeypatch: pytest.MonkeyPatch) -> dict[tuple[str, ...], Any]:
    """Per command path of the parsers (leaves only), its flags and positionals."""
    found: dict[tuple[str, ...], Any] = {}

    def walk(path: tuple[str, ...], parser: argparse.ArgumentParser) -> None:
        subs = _subcommands(parser)
        if path == () or not subs:
            found[path] = (_flags(parser), _positionals(parser))
        for name, sub in subs.items():
            walk((*path, name), service_parser(name, monkeypatch) if name in SERVICES else sub)

    walk((), build_parser())
    return found


def test_the_readme_synopsis_matches_the_parsers(monkeypatch: pytest.MonkeyPatch) -> None:
    readme = readme_synopsis()
    parsers = parsers_synopsis(monkeypatch)
    assert sorted(readme) == sorted(parsers)
    for path, (flags, positionals) in parsers.items():
        readme_flags, readme_words = readme[path]
        assert readme_flags == flags, f"emm {' '.join(path)}"
        for positional in positionals:
            assert positional in readme_words, f"emm {' '.join(path)}: {positional}"


def test_version_is_the_installed_package_version() -> None:
    result = subprocess.run(
        [*emm_command(), "--version"], capture_output=True, text=True, timeout=20
    )
    assert result.returncode == 0
    assert result.stdout.strip() == f"emm {importlib.metadata.version('energymonitoring')}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.5", ("10.0.0.5", None)),
        ("10.0.0.5:1502", ("10.0.0.5", 1502)),
        ("meter.local:502", ("meter.local", 502)),
        ("[fe80::1]:502", ("fe80::1", 502)),
        ("[fe80::1]", ("fe80::1", None)),
        ("fe80::1", ("fe80::1", None)),
    ],
)
def test_host_takes_a_port_and_ipv6_in_brackets(
    text: str, expected: tuple[str, int | None]
) -> None:
    assert host_port(text) == expected


@pytest.mark.parametrize("text", ["10.0.0.5:0", "10.0.0.5:70000", "[fe80::1]x", ":502", "h:p"])
def test_bad_host_is_a_usage_error(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        host_port(text)


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "x"])
def test_timeout_must_be_positive_seconds(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="above 0"):
        seconds(text)


def test_bounded_names_the_range() -> None:
    assert bounded(0, 255)("255") == 255
    with pytest.raises(argparse.ArgumentTypeError, match="from 0 to 255, got 256"):
        bounded(0, 255)("256")


def test_the_readme_profile_example_is_a_valid_profile() -> None:
    section = README.split("#### Profile format\n", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    profile = parse_profile(example, "README")
    assert profile.type == "my_meter"
    assert [r.name for r in profile.registers] == [
        "voltageL1",
        "importActiveEnergy",
        "serial",
        "operatingState",
        "events",
        "firmwareMajor",
        "acPower",
        "W_SF",
    ]
    assert profile.registers[1].is_counter
    assert [r.is_text for r in profile.registers[2:5]] == [True, True, True]
    assert profile.registers[6].scale_register == "W_SF"


def test_an_unknown_top_level_key_is_refused() -> None:
    text = 'type = "t"\nmax_read_register = 60\n[[registers]]\nname = "v"\naddress = 0\n'
    text += 'function_code = 4\ndata_type = "float32"\n'
    with pytest.raises(
        ConfigError, match=r"^p\.toml: unknown top-level key\(s\) max_read_register"
    ):
        parse_profile(text, "p.toml")
