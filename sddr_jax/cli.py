"""The `sddr-jax` command line.

Each subcommand lives in its own module `sddr_jax/commands/<name>.py`, which defines

    HELP: str                                  # one line for `sddr-jax --help`
    def add_arguments(parser) -> None          # fills an argparse parser
    def run(args) -> int                       # does the work, returns the exit code

Modules are imported only when their subcommand runs, so `sddr-jax --help` stays fast and a
broken optional dependency of one command never breaks another. User errors are raised as
`sddr_jax.errors.UserError` (or ValueError / FileNotFoundError from the boundary checks) and are
printed as one line `sddr-jax <command>: error: ...` with exit code 2.

Every command turns on JAX's persistent compilation cache (sddr_jax/caches.py: ~/.cache/sddr_jax/xla) before
it compiles anything; `--no-compile-cache` or `SDDR_JAX_COMPILE_CACHE=off` turn it off.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from sddr_jax import __version__
from sddr_jax.caches import enable_compile_cache
from sddr_jax.errors import UserError

# name -> (module, one-line help). The order is the order shown by --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("sddr_jax.commands.demo", "run the embedded end-to-end demo (synthetic data, self-distillation, metrics, pictures)"),
    "refine": ("sddr_jax.commands.refine", "refine low/high depth maps (one-stage or coarse-to-fine two-stage)"),
    "convert": ("sddr_jax.commands.convert", "convert the official PyTorch checkpoint (.pt) to a Flax/Orbax checkpoint"),
    "evaluate": ("sddr_jax.commands.evaluate", "evaluate depth predictions or a checkpoint on a dataset"),
    "train": ("sddr_jax.commands.train", "train the refiner with self-distillation"),
    "datasets": ("sddr_jax.commands.datasets", "build TFDS datasets (synthetic or from a manual download)"),
    "predict": ("sddr_jax.commands.predict", "run a JAX base depth predictor and write low/high maps"),
    "version": ("sddr_jax.commands.version", "print the versions of sddr-jax and its main dependencies"),
}


class _Parser(argparse.ArgumentParser):
    """argparse with a clearer message for an unknown subcommand."""

    def error(self, message: str):  # noqa: D401 - argparse API
        if "invalid choice" in message:
            bad = message.split("invalid choice:", 1)[1].split("(", 1)[0].strip()
            known = ", ".join(COMMANDS)
            message = f"unknown command {bad}. Known commands: {known}. See 'sddr-jax --help'."
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sddr-jax",
        description="Self-Distilled Depth Refinement in JAX. Run 'sddr-jax COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"sddr-jax {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=argparse.ArgumentParser)
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text, add_help=False)
    return parser


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename and e.strerror:
        return f"{e.filename}: {e.strerror}"  # e.g. "out/x.png: Not a directory", not "[Errno 20] ..."
    return " ".join(str(e).split())


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # First pass: only find the command; its own options are parsed by its module's parser.
    head, rest = argv[:1], argv[1:]
    if not head or head[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    if head[0] == "--version":
        print(f"sddr-jax {__version__}")
        return 0
    if head[0] not in COMMANDS:
        parser.parse_args(head)  # prints the unknown-command error and exits 2
    name = head[0]
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    cmd_parser = argparse.ArgumentParser(prog=f"sddr-jax {name}", description=help_text)
    module.add_arguments(cmd_parser)
    cmd_parser.add_argument("--no-compile-cache", action="store_true",
                            help="do not read or write compiled programs in the compilation cache "
                                 "(default: on, in $SDDR_JAX_COMPILE_CACHE or ~/.cache/sddr_jax/xla; "
                                 "SDDR_JAX_COMPILE_CACHE=off turns it off too)")
    if hasattr(module, "parse_extra"):  # a command that takes free-form options (train's --config.KEY=VALUE)
        args, extra = cmd_parser.parse_known_args(rest)
        module.parse_extra(args, extra, cmd_parser)
    else:
        args = cmd_parser.parse_args(rest)
    try:
        if not args.no_compile_cache:
            try:
                enable_compile_cache()
            except OSError as e:  # a cache is a convenience: say why it is off, and go on without it
                print(f"sddr-jax {name}: compilation cache off ({_one_line(e)})", file=sys.stderr)
        return int(module.run(args) or 0)
    except (UserError, ValueError, OSError) as e:
        # Expected failures (bad input, paths that do not exist or cannot be written, a full disk) end in one
        # line naming the file or argument; anything else is a bug and keeps its traceback.
        print(f"sddr-jax {name}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sddr-jax {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
