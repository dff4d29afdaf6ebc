"""The ``pico-analyze`` command's entry point (also ``python -m pico_analyze``).

``run`` and ``compare`` first start the writer process (:mod:`pico_analyze.writer_process`),
before anything imports torch; then the command line is parsed and run by
:mod:`pico_analyze.cli`.
"""

from __future__ import annotations

import sys

WRITING_COMMANDS = ("run", "compare")


def _command(args: list[str]) -> str | None:
    """The subcommand named on the command line: its first argument that is not an option."""
    return next((a for a in args if not a.startswith("-")), None)


def main() -> None:
    if _command(sys.argv[1:]) in WRITING_COMMANDS:
        from pico_analyze import writer_process

        writer_process.prestart()
    from pico_analyze.cli import main as command

    command(prog_name="pico-analyze")


if __name__ == "__main__":
    main()
