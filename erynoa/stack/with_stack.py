"""Run a command with the local stack up, then stop the stack if this run started it.

    python -m erynoa.stack.with_stack -- make _test

The command is expected to bring the stack up itself (``make stack``); this wrapper only
remembers whether the stack was fully up beforehand and, if it was not, runs ``erynoa stack
down`` afterwards, on success, failure, Ctrl-C or SIGTERM alike. Exits with the command's code.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from types import FrameType

from erynoa.settings import Settings
from erynoa.stack import manager
from erynoa.stack.base import StackError


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _say(message: str) -> None:
    print(f"with-stack: {message}", flush=True)


def main(argv: list[str]) -> int:
    command = argv[1:] if argv[:1] == ["--"] else argv
    if not command:
        print("usage: python -m erynoa.stack.with_stack -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    settings = Settings()
    was_up = manager.all_ok(settings)
    if was_up:
        _say("the stack is already up and stays up afterwards")
    signal.signal(signal.SIGTERM, _interrupt)
    code = 1
    child = subprocess.Popen(command)
    try:
        code = child.wait()
    except KeyboardInterrupt:
        child.terminate()
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
        code = 130
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the clean-up finish
        if not was_up:
            _say("stopping the stack this run started")
            try:
                manager.down(settings, _say)
            except StackError as exc:
                print(f"with-stack: error: {exc}", file=sys.stderr)
                code = code or 1
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
