"""The commands, one module each (as Polygraphy's tools are): a command's flags, help, exit codes and handler
live together in `commands/<name>.py`, and `COMMANDS` below is the registry the parser and `cli.main` read.
Adding a command is one new module (NAME, SUMMARY, DESCRIPTION, CONVERTER, EXITS, add_arguments, run) and one
line here (docs/development.md: "Add an app").

Nothing here imports onnx: `detect`, `heatmap` and `--help` start without it (a handler imports what it runs)."""
from __future__ import annotations

import argparse
from types import ModuleType
from typing import Dict, Tuple

from .. import __version__
from . import convert, detect, flags, gap, heatmap, inspect, validate

#: The registry: the order of `--help`'s list.
COMMANDS: Tuple[ModuleType, ...] = (convert, validate, inspect, heatmap, detect, gap)
BY_NAME: Dict[str, ModuleType] = {command.NAME: command for command in COMMANDS}

EXIT_CODES = """exit codes (see each command's --help):
  0  success    1  internal error    2  usage error    3  bad input
  4  nothing to convert    5  not equivalent    6  out of memory or disk space
  7  a stream's reader went away    130, 143  interrupted"""


def build_parser() -> argparse.ArgumentParser:
    """The command line: one sub-parser per command of `COMMANDS`; `args.command` names the one given."""
    parser = argparse.ArgumentParser(
        prog=flags.PROG, formatter_class=flags.formatter,
        description="Make an ONNX CNN classifier fully convolutional: its fully connected head becomes "
                    "convolutions, so the model runs on inputs larger than its training size and returns "
                    "one output per window position. Every conversion is checked with onnxruntime.",
        epilog=EXIT_CODES)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    flags.talk_flags(parser, top=True)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for command in COMMANDS:
        command.add_arguments(subparsers.add_parser(command.NAME, formatter_class=flags.formatter,
                                                    help=command.SUMMARY, description=command.DESCRIPTION,
                                                    epilog=flags.exit_codes(command.EXITS)))
    return parser
