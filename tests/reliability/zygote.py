"""A fork server for the crash harness: imports the daemon once, then forks a fresh daemon per cycle.

Run as ``python tests/reliability/zygote.py``. It reads commands on stdin and answers on stdout:

    spawn CONFIG LOGFILE   ->  pid PID        (a child runs ``schoolwatch run --config CONFIG``)
    reap PID               ->  status PID RC  (waits for a child the caller has signalled)

Importing the daemon costs seconds (scipy through datasketch); forking a process that has already
imported it makes each crash cycle cost only what the daemon itself does. The child runs the same
``monitor.cli.main`` as ``python -m monitor`` from argument parsing on, in a fresh process.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _child(config: str, logfile: str) -> None:
    """Become the daemon: stdin/stdout to /dev/null, stderr to ``logfile``; never returns."""
    code = 70
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        log = os.open(logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.dup2(log, 2)
        os.close(devnull)
        os.close(log)
        sys.stdin = open(0, closefd=False)
        sys.stdout = open(1, "w", closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        from monitor.cli import main

        code = main(["run", "--config", config])
    except BaseException as exc:  # the exit code carries it; the log has the traceback
        import traceback

        traceback.print_exc()
        code = 130 if isinstance(exc, KeyboardInterrupt) else 70
    finally:
        try:
            sys.stderr.flush()
        finally:
            os._exit(code)


def main() -> int:
    """Serve spawn and reap commands until stdin closes, then kill any child left."""
    sys.path.insert(0, str(ROOT))
    # Everything the daemon imports, so children start at argument parsing.
    import classifiers.rules  # noqa: F401
    import connectors.rss  # noqa: F401
    import monitor.cli  # noqa: F401
    import monitor.pipeline  # noqa: F401
    import monitor.scheduler  # noqa: F401
    from monitor import registry

    for group, name in ((registry.CONNECTORS, "rss"), (registry.CLASSIFIERS, "rules"),
                        (registry.CHANNELS, "smtp"), (registry.CHANNELS, "file")):
        registry.load(group, name)
    children: set[int] = set()
    print("ready", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "spawn":
            pid = os.fork()
            if pid == 0:
                _child(words[1], words[2])
            children.add(pid)
            print(f"pid {pid}", flush=True)
        elif words[0] == "reap":
            pid = int(words[1])
            _, status = os.waitpid(pid, 0)
            children.discard(pid)
            print(f"status {pid} {os.waitstatus_to_exitcode(status)}", flush=True)
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
