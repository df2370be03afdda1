"""`cosession`: one entry point, one module per command (imported only when it runs)."""

from __future__ import annotations

import argparse
import importlib
import sys

# command → the module that implements it: its docstring's first line is the help, its
# add_arguments(parser) declares the arguments and sets `run`.
COMMANDS = {
    "serve": "cosession.serve",
    "loadtest": "cosession.loadtest",
    "audit": "cosession.audit",
    "cluster": "cosession.cluster",
    "recordings": "cosession.recordings",
    "join": "cosession.join",
    "admin": "cosession.admin",
    "keys": "cosession.keys",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cosession", description="Web remote access with joint sessions.")
    parser.add_argument("--config", metavar="FILE", help="a TOML file overriding config/default.toml")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # not built yet
        command = sub.add_parser(name, help=module.__doc__.strip().splitlines()[0])
        # --config is accepted after the command too: `cosession serve --config FILE`
        command.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                             help="a TOML file overriding config/default.toml")
        module.add_arguments(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
