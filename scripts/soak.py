"""Crash soak: SIGKILL the daemon hundreds of times against local feed and SMTP servers, then check
that every alert was delivered, none twice except the at-least-once case, and the store is sound.

    .venv/bin/python scripts/soak.py --kills 300
    .venv/bin/python scripts/soak.py --kills 20 --mode exec   # real `python -m monitor run` each time

Not part of the test suite; tests/reliability/test_crash.py runs the same harness with ~30 kills.
Exit status 0 when every check holds, 1 otherwise.
"""
from __future__ import annotations

import argparse
import logging
import random
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CHUNK = 5  # kills between adjustments of the kill window

from tests.reliability.harness import (  # noqa: E402
    CrashRun,
    CrashWorld,
    Cycle,
    ExecLauncher,
    ForkLauncher,
    error_lines,
    finish,
    kill_cycles,
    launched,
    verify,
)


def main(argv: list[str] | None = None) -> int:
    """Run the soak and print a summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=300, help="SIGKILLs to deliver (default 300)")
    parser.add_argument("--seed", type=int, default=int(time.time()),
                        help="random seed for the kill delays (default: the time; printed)")
    parser.add_argument("--mode", choices=["fork", "exec"], default="fork",
                        help="fork: daemons forked from a pre-imported server (fast); "
                             "exec: `python -m monitor run` each time (slow, seconds per start)")
    parser.add_argument("--min-delay", type=float, default=0.05, help="seconds (default 0.05)")
    parser.add_argument("--max-delay", type=float, default=1.5,
                        help="seconds (default 1.5; lengthened while no daemon finishes its polls)")
    parser.add_argument("--per-cycle", type=int, default=1,
                        help="new items per feed per cycle (default 1)")
    parser.add_argument("--window", type=int, default=50,
                        help="items each feed serves, newest first (default 50; 0: all)")
    parser.add_argument("--hours", type=float, default=6.0, help="stop killing after this long")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, database)")
    args = parser.parse_args(argv)
    # aiosmtpd warns on every login that an attribute it sets itself is deprecated, and logs
    # every connection a killed daemon drops; neither says anything about Schoolwatch.
    logging.getLogger("mail.log").setLevel(logging.CRITICAL)

    work = Path(tempfile.mkdtemp(prefix="schoolwatch-soak-"))
    print(f"soak: {args.kills} kills, seed {args.seed}, mode {args.mode}, work folder {work}")
    started = time.monotonic()
    world = CrashWorld(work, cycles=args.kills, per_cycle=args.per_cycle,
                       window=args.window or None)
    # A killed daemon resets its HTTP connections; the test server would print each one.
    world.http._server.handle_error = lambda _request, _address: None
    run = CrashRun()
    ok = False
    try:
        with launched(world, ForkLauncher if args.mode == "fork" else ExecLauncher) as launcher:
            rng = random.Random(args.seed)
            deadline = time.monotonic() + args.hours * 3600
            longest = args.max_delay
            while len(run.cycles) < args.kills and time.monotonic() < deadline:
                kill_cycles(world, launcher, min(CHUNK, args.kills - len(run.cycles)), rng,
                            (args.min_delay, longest), deadline,
                            wait_for_start=args.mode == "exec", run=run)
                longest = next_longest(run.cycles[-CHUNK:], longest, args.max_delay)
                if len(run.cycles) % 25 == 0 or len(run.cycles) == args.kills:
                    print(f"  {len(run.cycles):>5} kills  {time.monotonic() - started:7.0f}s  "
                          f"{run.cycles[-1].mentions_after} mentions stored, "
                          f"{len(run.cycles[-1].pending_after)} messages pending, "
                          f"kills within {longest:.1f}s of a start", flush=True)
            print("  final run: every item published, SIGTERM once settled", flush=True)
            finish(world, launcher, run, timeout=120 + 0.5 * args.kills)
        run.seconds = time.monotonic() - started
        findings = verify(world, run)
        errors = error_lines(world)
        ok = run.final_exit_code == 0 and not errors and all(
            c.exit_code == -9 for c in run.cycles)
        report(run, findings, errors)
    except AssertionError as exc:
        run.seconds = time.monotonic() - started
        print(f"\nCHECK FAILED after {len(run.cycles)} kills: {exc}")
        traceback.print_exc()
    finally:
        if ok and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work folder kept: {work}")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def next_longest(recent: list[Cycle], longest: float, floor: float) -> float:
    """Lengthen the kill window when no recent daemon lived to finish its polls, else shorten it.

    A daemon killed before its polls finish every time makes no progress at all; on a busy
    machine, or as the store grows, the polls can take longer than ``--max-delay``.
    """
    if all(c.phase in ("startup", "polling") for c in recent):
        return min(longest * 1.5, 30.0)
    if all(c.phase in ("sending", "idle") for c in recent):
        return max(longest * 0.9, floor)
    return longest


def report(run: CrashRun, findings, errors: list[str]) -> None:
    """The summary printout."""
    phases = run.phases()
    in_window = sum(bool(c.unmarked) for c in run.cycles)
    died_alone = [c.number for c in run.cycles if c.exit_code != -9]
    print(f"""
summary ({run.seconds:.0f}s)
  kills delivered            {run.kills} of {len(run.cycles)} cycles (died on its own: {died_alone or 'never'})
  where the kills landed     startup {phases['startup']}, polling {phases['polling']}, \
sending {phases['sending']}, idle {phases['idle']}
  mentions stored            {findings.mentions} (every published item about the school)
  incidents                  {findings.incidents}
  outbox messages            {findings.messages}, all sent
  received by the relay      {findings.received} ({findings.received - findings.messages} extra copies)
  at-least-once              {in_window} kills fell between the relay's accept and marking sent;
                             {len(findings.duplicates)} messages arrived twice or more (same Message-ID)
  leases left by the dead    {run.stuck_leases} messages waited out the 5-minute lease
  final SIGTERM exit code    {run.final_exit_code}
  error lines in the logs    {len(errors)}""")
    for line in errors[:20]:
        print(f"    {line}")


if __name__ == "__main__":
    sys.exit(main())
