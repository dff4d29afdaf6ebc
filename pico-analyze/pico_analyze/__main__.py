"""The ``pico-analyze`` command's entry point (also ``python -m pico_analyze``).

``run`` and ``compare`` first start the writer process (:mod:`pico_analyze.writer_process`),
before anything imports torch; then the command line is parsed and run by
:mod:`pico_analyze.cli`. The process ends with its exit handlers, without the interpreter's
teardown of every module (:func:`_exit_now`).
"""

from __future__ import annotations

import atexit
import os
import sys

WRITING_COMMANDS = ("run", "compare")


def _command(args: list[str]) -> str | None:
    """The subcommand named on the command line: its first argument that is not an option."""
    return next((a for a in args if not a.startswith("-")), None)


_EXIT_STATUS = [0]


def _exit_now() -> None:
    """The last exit handler (registered first): the process ends here with the command's exit
    status, once every other exit handler has run and the standard streams are flushed, without
    the interpreter's teardown of every module (~0.1 s with torch loaded). Every file the command
    writes is closed by then."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(_EXIT_STATUS[0])


def main() -> None:
    atexit.register(_exit_now)
    if _command(sys.argv[1:]) in WRITING_COMMANDS:
        from pico_analyze import writer_process

        writer_process.prestart()
    from pico_analyze.cli import main as command

    try:
        command(prog_name="pico-analyze")
    except SystemExit as done:  # click ends every command with one
        code = done.code
        _EXIT_STATUS[0] = code if isinstance(code, int) else (0 if code is None else 1)
        if code is not None and not isinstance(code, int):
            print(code, file=sys.stderr)
        raise SystemExit(_EXIT_STATUS[0]) from None
    except BaseException:
        _EXIT_STATUS[0] = 1
        raise


if __name__ == "__main__":
    main()
