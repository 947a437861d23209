"""The ``schoolwatch`` command."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

from monitor.config import ConfigError, Settings, load_config

log = logging.getLogger("schoolwatch")

CLASSIFY_BATCH = 64


def demo_config_path() -> Path:
    """The bundled demo config (fictional school, local feeds, file outbox)."""
    return Path(str(resources.files("monitor") / "demo" / "config.toml"))


# Commands whose options belong to their own module's parser.
DELEGATED = {"train": "classifiers.train", "eval": "classifiers.evaluate"}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in DELEGATED:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        rest = argv[argv.index(command) + 1:]
        return _delegate(DELEGATED[command], rest)
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Alembic narrates every plugin it sets up at INFO; the migration's own line is enough.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.root.level))
    # The packaged model is all we need; never stall on the network looking for a hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except ConfigError as exc:
        for line in exc.lines:
            print(f"config error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="schoolwatch",
        description="Watch public mentions of a school and alert the headteacher or the DSL.",
    )
    parser.add_argument("--log-level", default=os.environ.get("SCHOOLWATCH_LOG_LEVEL", "info"),
                        choices=["debug", "info", "warning", "error"])
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    run = commands.add_parser("run", help="run the daemon (or every source once with --once)")
    _config_option(run)
    run.add_argument("--once", action="store_true",
                     help="poll every source once, deliver the outbox, print a summary, exit")
    run.set_defaults(handler=_cmd_run)

    status = commands.add_parser("status", help="health: sources, outbox, open incidents "
                                 "(exit 0 ok, 1 degraded, 2 failing)")
    _config_option(status)
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=_cmd_status)

    check = commands.add_parser("check-config", help="validate a config file")
    check.add_argument("file", type=Path)
    check.set_defaults(handler=_cmd_check_config)

    classify = commands.add_parser(
        "classify", help="classify JSON Lines from stdin ({id, text, school?, source?})")
    _config_option(classify)
    classify.set_defaults(handler=_cmd_classify)

    sources = commands.add_parser("sources", help="list sources or test one")
    source_commands = sources.add_subparsers(title="sources commands", metavar="ACTION")
    listing = source_commands.add_parser("list", help="each source and its health")
    _config_option(listing)
    listing.set_defaults(handler=_cmd_sources_list)
    test = source_commands.add_parser("test", help="fetch once without storing or alerting")
    test.add_argument("source_id")
    _config_option(test)
    test.add_argument("--from-cursor", action="store_true",
                      help="start from the stored cursor instead of from scratch")
    test.set_defaults(handler=_cmd_sources_test)

    incidents = commands.add_parser("incidents", help="list, show and triage incidents")
    incident_commands = incidents.add_subparsers(title="incidents commands", metavar="ACTION")
    listing = incident_commands.add_parser("list", help="incidents, newest activity first")
    _config_option(listing)
    listing.add_argument("--school")
    listing.add_argument("--category", choices=["safeguarding", "disparaging", "reputational"])
    listing.add_argument("--status", choices=["open", "acknowledged", "resolved", "false_positive"])
    listing.add_argument("--since", help="e.g. 7d, 12h or 2026-11-01")
    listing.set_defaults(handler=_cmd_incidents_list)
    show = incident_commands.add_parser("show", help="one incident: mentions, verdicts, emails, audit")
    show.add_argument("incident_id", type=int)
    _config_option(show)
    show.set_defaults(handler=_cmd_incidents_show)
    for action, text in (("ack", "acknowledge: you have seen it and are dealing with it"),
                         ("resolve", "close it as dealt with"),
                         ("false-positive", "close it as wrongly flagged (kept as a training example)"),
                         ("reopen", "open a closed incident again"),
                         ("note", "add a note to the audit log")):
        step = incident_commands.add_parser(action, help=text)
        step.add_argument("incident_id", type=int)
        step.add_argument("--by", required=True, help="who is acting (recorded in the audit log)")
        step.add_argument("--note", required=action == "note")
        _config_option(step)
        step.set_defaults(handler=_cmd_incident_action, action=action)

    for action, text in (("hold", "place a legal hold: nothing of the incident is purged or erased"),
                         ("release", "lift a legal hold")):
        step = incident_commands.add_parser(action, help=text)
        step.add_argument("incident_id", type=int)
        step.add_argument("--by", required=True)
        step.add_argument("--reason", required=action == "hold")
        _config_option(step)
        step.set_defaults(handler=_cmd_incident_hold, hold=action == "hold")

    evidence = commands.add_parser("evidence", help="export or verify an incident's evidence pack")
    evidence_commands = evidence.add_subparsers(title="evidence commands", metavar="ACTION")
    pack = evidence_commands.add_parser("export", help="write an incident's evidence pack (zip)")
    pack.add_argument("incident_id", type=int)
    pack.add_argument("--out", type=Path, required=True)
    pack.add_argument("--by", help="who is exporting (default: your login name)")
    _config_option(pack)
    pack.set_defaults(handler=_cmd_evidence_export)
    check_pack = evidence_commands.add_parser("verify", help="re-check every hash in a pack")
    check_pack.add_argument("file", type=Path)
    check_pack.add_argument("--manifest-sha256",
                            help="the manifest hash printed at export (and in the audit log)")
    check_pack.set_defaults(handler=_cmd_evidence_verify)

    digest = commands.add_parser("digest", help="daily and weekly digests")
    digest_commands = digest.add_subparsers(title="digest commands", metavar="ACTION")
    digest_preview = digest_commands.add_parser("preview", help="write the digest that would go now")
    digest_preview.add_argument("--school", required=True)
    digest_preview.add_argument("--period", choices=["daily", "weekly"], default="daily")
    digest_preview.add_argument("--role", help="default: the first role a digest route names")
    digest_preview.add_argument("--out", type=Path,
                                help="an .html (images inline) or .eml file; default digest-SCHOOL-PERIOD.html")
    _config_option(digest_preview)
    digest_preview.set_defaults(handler=_cmd_digest_preview)

    purge = commands.add_parser("purge", help="delete records older than [retention] keeps")
    purge.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    _config_option(purge)
    purge.set_defaults(handler=_cmd_purge)

    db = commands.add_parser("db", help="the database schema (migrations run at every start too)")
    db_commands = db.add_subparsers(title="db commands", metavar="ACTION")
    db_upgrade = db_commands.add_parser("upgrade", help="migrate the store to this version's schema")
    _config_option(db_upgrade)
    db_upgrade.set_defaults(handler=_cmd_db_upgrade)
    db_current = db_commands.add_parser("current", help="the store's schema revision and the newest")
    _config_option(db_current)
    db_current.set_defaults(handler=_cmd_db_current)

    privacy = commands.add_parser("privacy", help="data-subject requests")
    privacy_commands = privacy.add_subparsers(title="privacy commands", metavar="ACTION")
    subject_export = privacy_commands.add_parser("export", help="everything stored about a person")
    subject_export.add_argument("--subject", required=True, help="a handle or a name")
    subject_export.add_argument("--out", type=Path, required=True)
    subject_export.add_argument("--by", required=True)
    _config_option(subject_export)
    subject_export.set_defaults(handler=_cmd_privacy_export)
    erase = privacy_commands.add_parser("erase", help="erase what is stored about a person")
    erase.add_argument("--subject", required=True)
    erase.add_argument("--by", required=True)
    _config_option(erase)
    erase.set_defaults(handler=_cmd_privacy_erase)

    suppress = commands.add_parser("suppress", help="per-school suppression rules")
    suppress_commands = suppress.add_subparsers(title="suppress commands", metavar="ACTION")
    adding = suppress_commands.add_parser("add", help="stop alerting on an author or phrase")
    adding.add_argument("--school", required=True)
    what = adding.add_mutually_exclusive_group(required=True)
    what.add_argument("--author")
    what.add_argument("--phrase")
    adding.add_argument("--by", required=True)
    adding.add_argument("--reason")
    _config_option(adding)
    adding.set_defaults(handler=_cmd_suppress_add)
    rules = suppress_commands.add_parser("list", help="active rules (--all: removed ones too)")
    rules.add_argument("--school")
    rules.add_argument("--all", action="store_true")
    _config_option(rules)
    rules.set_defaults(handler=_cmd_suppress_list)
    removing = suppress_commands.add_parser("remove", help="deactivate a rule (kept for the record)")
    removing.add_argument("rule_id", type=int)
    removing.add_argument("--by", required=True)
    _config_option(removing)
    removing.set_defaults(handler=_cmd_suppress_remove)

    feedback = commands.add_parser("feedback", help="labelled examples from staff verdicts")
    feedback_commands = feedback.add_subparsers(title="feedback commands", metavar="ACTION")
    export = feedback_commands.add_parser("export", help="write false positives as JSON Lines")
    export.add_argument("--out", type=Path, required=True)
    _config_option(export)
    export.set_defaults(handler=_cmd_feedback_export)

    # Listed for --help only: main() hands these to their own modules' parsers.
    commands.add_parser("train", help="train the classifier head (see: schoolwatch train --help)")
    commands.add_parser("eval", help="evaluate a classifier on labelled JSON Lines "
                                     "(see: schoolwatch eval --help)")
    return parser


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, default=os.environ.get("SCHOOLWATCH_CONFIG"),
        help="config file (default: $SCHOOLWATCH_CONFIG, else the bundled demo)")


def _settings(args: argparse.Namespace) -> Settings:
    # Loaded once per command: handlers ask for it and for _engine(args), which needs it too.
    if getattr(args, "loaded_settings", None) is None:
        if args.config is None:
            log.info("no --config given: using the bundled demo configuration")
        args.loaded_settings = load_config(args.config or demo_config_path())
    return args.loaded_settings


def _delegate(module: str, argv: list[str]) -> int:
    import importlib

    return int(importlib.import_module(module).main(argv) or 0)


# --- run ---------------------------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    from monitor.pipeline import Runner
    from monitor.scheduler import run_forever

    settings = _settings(args)
    runner = Runner(settings)
    if not args.once:
        return run_forever(runner)
    try:
        runner.release_stale_leases()
        results = [runner.poll(s.id, force=True) for s in settings.sources if s.enabled]
        delivered = runner.deliver_outbox()
        while delivered.sent and _due_messages(runner):
            more = runner.deliver_outbox()
            delivered.sent += more.sent
            delivered.failed += more.failed
            if not more.sent:
                break
    finally:
        runner.close()
    _print_summary(settings, results, delivered, runner)
    return 0


def _due_messages(runner: Any) -> int:
    from sqlmodel import Session, func, select

    from monitor.store import OutboxMessage

    with Session(runner.engine) as session:
        return session.exec(select(func.count()).select_from(OutboxMessage).where(
            OutboxMessage.status == "pending",
            OutboxMessage.next_attempt_at <= runner.clock())).one()


def _print_summary(settings: Settings, results: list[Any], delivered: Any, runner: Any) -> None:
    from sqlmodel import Session, func, select

    from monitor.store import OutboxMessage

    print(f"{'source':<28} {'status':<13} {'fetched':>7} {'new':>5} {'about':>5} "
          f"{'flagged':>7} {'incidents':>9}")
    for r in results:
        print(f"{r.source_id:<28} {r.status:<13} {r.fetched:>7} {r.new:>5} {r.relevant:>5} "
              f"{r.flagged:>7} {r.incidents:>9}")
        if r.error:
            print(f"    {r.error}")
    with Session(runner.engine) as session:
        pending = session.exec(select(func.count()).select_from(OutboxMessage)
                               .where(OutboxMessage.status == "pending")).one()
    where = (f"written to {Path(settings.email.outbox_dir).resolve()}"
             if settings.email.channel == "file" else f"sent via {settings.email.channel}")
    print(f"\n{sum(r.incidents for r in results)} new incidents; {delivered.sent} emails "
          f"{where}; {delivered.failed} failed; {pending} still queued for retry")


# --- status ------------------------------------------------------------------------


def _cmd_status(args: argparse.Namespace) -> int:
    from monitor.health import health_report

    settings = _settings(args)
    report = health_report(_engine(args), settings)
    if args.json:
        print(report.to_json())
    else:
        print(f"schoolwatch: {report.status.upper()}")
        for problem in report.problems:
            print(f"  ! {problem}")
        print(f"outbox: {report.outbox_pending} pending" + (
            f", oldest {report.oldest_pending_seconds / 60:.0f} min" if report.oldest_pending_seconds else ""))
        print("open incidents: " + (", ".join(f"{c} {n}" for c, n in sorted(report.open_incidents.items()))
                                    or "none"))
        for source in report.sources:
            print(f"  {source.id:<28} {source.state:<9} fails {source.consecutive_failures:<3} "
                  f"last ok {source.last_success or 'never'}")
    return {"ok": 0, "degraded": 1, "failing": 2}[report.status]


# --- check-config ------------------------------------------------------------------


def _cmd_check_config(args: argparse.Namespace) -> int:
    settings = load_config(args.file)
    print(f"{args.file}: OK ({len(settings.schools)} schools, {len(settings.sources)} sources, "
          f"{len(settings.routes)} routes, email via {settings.email.channel})")
    return 0


# --- classify ----------------------------------------------------------------------


def _cmd_classify(args: argparse.Namespace) -> int:
    settings = _settings(args) if args.config else None
    return classify_stream(sys.stdin, sys.stdout, settings)


def classify_stream(stdin: TextIO, stdout: TextIO, settings: Settings | None) -> int:
    """The classify contract: one JSON line out per JSON line in, in order."""
    from classifiers.base import Assessment, Category, ClassifierInput
    from monitor import registry
    from monitor.config import ClassifierSettings, validate_options
    from monitor.relevance import SchoolMatcher

    chosen = settings.classifier if settings else ClassifierSettings()
    plugin = registry.load(registry.CLASSIFIERS, chosen.name)
    classifier = plugin(validate_options(plugin.Config, chosen.options, "classifier.options"))
    matchers = {s.id: SchoolMatcher.build(s.name, s.aliases, s.handles, s.exclusions)
                for s in settings.schools} if settings else {}
    failures = 0
    for chunk in _chunks(_read_requests(stdin), CLASSIFY_BATCH):
        valid = [item for item in chunk if "error" not in item]
        inputs = [ClassifierInput(text=item["text"]) for item in valid]
        verdicts = iter(classifier.classify(inputs) if inputs else [])
        for item in chunk:
            if "error" in item:
                failures += 1
                _write(stdout, {"id": item.get("id"), "error": item["error"]})
                continue
            verdict: Assessment = next(verdicts)
            verdict = _apply_context(item, verdict, settings, matchers)
            _write(stdout, {
                "id": item.get("id"),
                "category": verdict.category.value,
                "severity": verdict.severity.value if verdict.severity else None,
                "subtype": verdict.subtype.value if verdict.subtype else None,
                "scores": {c.value: round(float(verdict.scores.get(c.value, 0.0)), 4)
                           for c in (Category.SAFEGUARDING, Category.DISPARAGING,
                                     Category.REPUTATIONAL)},
                "reasons": verdict.reasons,
            })
        stdout.flush()
    return 1 if failures else 0


def _apply_context(item: dict[str, Any], verdict: Any, settings: Settings | None,
                   matchers: dict[str, Any]) -> Any:
    """Apply the school's relevance and the source's category limits, when given."""
    from classifiers.base import Assessment, Category

    if settings is None:
        return verdict
    source = None
    if item.get("source"):
        try:
            source = settings.source(str(item["source"]))
        except KeyError:
            pass
    school_id = item.get("school") or (source.school if source else None)
    matcher = matchers.get(school_id) if school_id else None
    needs_mention = source.require_mention if source else True
    if matcher is not None and needs_mention and not matcher.matches(item["text"]):
        return Assessment(category=Category.NONE, scores=verdict.scores,
                          reasons=[f"not about {settings.school(school_id).name}: "
                                   "no name, alias or handle outside the exclusions"],
                          classifier=verdict.classifier)
    if source is not None and source.categories is not None:
        return verdict.restricted_to(source.categories)
    return verdict


def _read_requests(stdin: TextIO) -> Iterator[dict[str, Any]]:
    for number, line in enumerate(stdin, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            yield {"id": None, "error": f"line {number}: not JSON: {exc}"}
            continue
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            ident = item.get("id") if isinstance(item, dict) else None
            yield {"id": ident, "error": f"line {number}: needs a string 'text'"}
            continue
        yield item


def _chunks(items: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _write(stdout: TextIO, obj: dict[str, Any]) -> None:
    stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")


# --- incidents, suppression, feedback ---------------------------------------------


def _engine(args: argparse.Namespace) -> Any:
    from monitor.store import init_db, make_engine

    engine = make_engine(_settings(args).store.url)
    init_db(engine)
    return engine


def parse_since(value: str | None) -> Any:
    """A cut-off time from '7d', '12h' or an ISO date; None stays None."""
    from datetime import UTC, datetime, timedelta

    from monitor.config import parse_duration

    if not value:
        return None
    try:
        return datetime.now(UTC) - timedelta(seconds=parse_duration(value))
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise SystemExit(f"--since: {value!r} is neither a duration (7d) nor a date (2026-11-01)")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _cmd_incidents_list(args: argparse.Namespace) -> int:
    from monitor.triage import list_incidents

    rows = list_incidents(_engine(args), school=args.school, category=args.category,
                          status=args.status, since=parse_since(args.since))
    print(f"{'id':>5}  {'status':<14} {'category':<13} {'severity':<8} {'school':<14} "
          f"{'mentions':>8}  {'last seen (UTC)':<16}  title")
    for i in rows:
        print(f"{i.id:>5}  {i.status:<14} {i.category:<13} {i.severity or '-':<8} "
              f"{i.school_id:<14} {i.mention_count:>8}  {i.last_seen:%Y-%m-%d %H:%M}  {i.title[:60]}")
    if not rows:
        print("no incidents match")
    return 0


def _cmd_incidents_show(args: argparse.Namespace) -> int:
    from monitor.triage import TriageError, detail

    try:
        found = detail(_engine(args), args.incident_id)
    except TriageError as exc:
        print(exc, file=sys.stderr)
        return 1
    i = found.incident
    print(f"incident #{i.id}: {i.category} {i.severity or ''} {i.subtype or ''}".rstrip())
    print(f"school {i.school_id}; status {i.status}; {i.mention_count} mentions on "
          f"{', '.join(i.platforms)}; first seen {i.first_seen:%Y-%m-%d %H:%M} UTC, "
          f"last seen {i.last_seen:%Y-%m-%d %H:%M} UTC")
    print("\nmentions:")
    for mention, verdict in found.mentions:
        print(f"  [{mention.id}] {mention.published_at:%Y-%m-%d %H:%M} {mention.platform} "
              f"{mention.author or '-'}: {(mention.title or mention.text)[:100]!r}")
        print(f"       {mention.url}")
        if verdict is not None:
            print(f"       {verdict.category} {verdict.severity or ''}: {'; '.join(verdict.reasons)}")
    print("\nmessages:")
    for message in found.messages:
        print(f"  {message.kind:<7} {message.recipient:<40} {message.status:<8} "
              f"attempts {message.attempts}")
    print("\naudit:")
    for entry in found.audit:
        print(f"  {entry.at:%Y-%m-%d %H:%M:%S} {entry.actor}: {entry.action} {entry.detail}")
    return 0


def _cmd_incident_action(args: argparse.Namespace) -> int:
    from monitor.triage import TriageError, apply

    try:
        incident = apply(_engine(args), args.incident_id, args.action, args.by, note=args.note)
    except TriageError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"incident #{incident.id} is {incident.status} ({args.action} by {args.by}, audited)")
    return 0


def _cmd_incident_hold(args: argparse.Namespace) -> int:
    from monitor.privacy import set_legal_hold

    try:
        incident = set_legal_hold(_engine(args), args.incident_id, args.by, args.hold, args.reason)
    except LookupError as exc:
        print(exc, file=sys.stderr)
        return 1
    state = f"under legal hold ({incident.legal_hold_reason})" if incident.legal_hold else "released"
    print(f"incident #{incident.id} {state}")
    return 0


def _cmd_evidence_export(args: argparse.Namespace) -> int:
    from monitor.evidence.cli import export_command

    settings = _settings(args)
    return export_command(settings, args.incident_id, args.out, args.by, evidence=settings.evidence)


def _cmd_evidence_verify(args: argparse.Namespace) -> int:
    from monitor.evidence.cli import verify_command

    return verify_command(args.file, args.manifest_sha256)


def _cmd_digest_preview(args: argparse.Namespace) -> int:
    import base64
    from datetime import UTC, datetime

    from alerts.base import OutgoingMessage
    from alerts.email import build_email
    from monitor.digests import preview

    settings = _settings(args)
    if args.school not in {s.id for s in settings.schools}:
        print(f"unknown school {args.school!r}", file=sys.stderr)
        return 2
    role, rendered = preview(_engine(args), settings, args.school, args.period, args.role,
                             datetime.now(UTC))
    out = args.out or Path(f"digest-{args.school}-{args.period}.html")
    if out.suffix == ".eml":
        message = OutgoingMessage(recipient=f"{role}@preview.invalid", sender=settings.email.sender,
                                  subject=rendered.subject, text=rendered.text, html=rendered.html,
                                  message_id="<preview@schoolwatch.invalid>", images=rendered.images)
        out.write_bytes(bytes(build_email(message)))
    else:
        html = rendered.html
        for cid, data in rendered.images.items():
            html = html.replace(f"cid:{cid}", "data:image/png;base64," + base64.b64encode(data).decode())
        out.write_text(html, encoding="utf-8")
    print(f"{rendered.subject}\nwritten to {out} (for role {role}; nothing was sent)")
    return 0


def _cmd_purge(args: argparse.Namespace) -> int:
    from monitor.retention import purge

    settings = _settings(args)
    counts = purge(_engine(args), settings.retention, dry_run=args.dry_run, actor="cli")
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb}: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())
                                   if v and k != "incidents_on_hold_kept") or "nothing"))
    print(f"incidents under legal hold kept: {counts['incidents_on_hold_kept']}")
    return 0


def _cmd_db_upgrade(args: argparse.Namespace) -> int:
    from monitor import migrations

    url = _settings(args).store.url
    before = migrations.current(url)
    after = migrations.upgrade(url)
    print(f"schema: {before or 'none'} -> {after}" if before != after else f"schema: {after}, up to date")
    return 0


def _cmd_db_current(args: argparse.Namespace) -> int:
    from monitor import migrations

    revision, newest = migrations.current(_settings(args).store.url), migrations.head()
    print(f"schema: {revision or 'none'} (newest {newest})")
    return 0 if revision == newest else 1


def _cmd_privacy_export(args: argparse.Namespace) -> int:
    from monitor.privacy import export_subject

    counts = export_subject(_engine(args), args.subject, args.out, args.by)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def _cmd_privacy_erase(args: argparse.Namespace) -> int:
    from monitor.privacy import erase_subject

    counts, refused = erase_subject(_engine(args), args.subject, args.by)
    print("erased: " + ", ".join(f"{k} {v}" for k, v in counts.items()
                                 if k not in ("mentions_refused_legal_hold", "pending_messages_kept")))
    if counts["pending_messages_kept"]:
        print(f"kept {counts['pending_messages_kept']} undelivered alerts (they go to the DSL/head first)")
    if refused:
        print(f"REFUSED {counts['mentions_refused_legal_hold']} mentions in incidents under legal "
              f"hold: {', '.join(f'#{i}' for i in refused)}. Release the hold to erase them.")
        return 1
    return 0


def _cmd_suppress_add(args: argparse.Namespace) -> int:
    from monitor.feedback import FeedbackError, add_rule

    settings = _settings(args)
    if args.school not in {s.id for s in settings.schools}:
        print(f"unknown school {args.school!r}", file=sys.stderr)
        return 2
    kind, value = ("author", args.author) if args.author else ("phrase", args.phrase)
    try:
        rule = add_rule(_engine(args), args.school, kind, value, args.by, args.reason)
    except FeedbackError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"rule #{rule.id}: {kind} {rule.value!r} suppressed for {args.school} "
          f"(undo: schoolwatch suppress remove {rule.id} --by NAME)")
    return 0


def _cmd_suppress_list(args: argparse.Namespace) -> int:
    from monitor.feedback import list_rules

    rules = list_rules(_engine(args), args.school, include_removed=args.all)
    for rule in rules:
        state = (f"removed by {rule.removed_by} {rule.removed_at:%Y-%m-%d}" if rule.removed_at
                 else "active")
        print(f"#{rule.id:<4} {rule.school_id:<14} {rule.kind:<7} {rule.value!r:<40} "
              f"by {rule.created_by} {rule.created_at:%Y-%m-%d}  {state}")
    if not rules:
        print("no suppression rules")
    return 0


def _cmd_suppress_remove(args: argparse.Namespace) -> int:
    from monitor.feedback import FeedbackError, remove_rule

    try:
        rule = remove_rule(_engine(args), args.rule_id, args.by)
    except FeedbackError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"rule #{rule.id} removed; mentions it matched will be alerted again")
    return 0


def _cmd_feedback_export(args: argparse.Namespace) -> int:
    from monitor.feedback import export_examples

    count = export_examples(_engine(args), args.out)
    print(f"{count} labelled examples written to {args.out}")
    return 0


# --- sources -----------------------------------------------------------------------


def _cmd_sources_list(args: argparse.Namespace) -> int:
    from sqlmodel import Session

    from monitor.store import SourceState, init_db, make_engine

    settings = _settings(args)
    engine = make_engine(settings.store.url)
    init_db(engine)
    print(f"{'source':<26} {'connector':<10} {'school':<16} {'every':>6} {'health':<10} "
          f"{'fails':>5}  last success / last error")
    with Session(engine) as session:
        for source in settings.sources:
            state = session.get(SourceState, source.id)
            health = _health(source, state)
            last_ok = f"{state.last_success_at:%Y-%m-%d %H:%M}" if state and \
                state.last_success_at else "never"
            error = f" / {state.last_error[:80]}" if state and state.last_error and \
                state.consecutive_failures else ""
            print(f"{source.id:<26} {source.connector:<10} {source.school:<16} "
                  f"{_every(source.interval):>6} {health:<10} "
                  f"{state.consecutive_failures if state else 0:>5}  {last_ok}{error}")
    return 0


def _health(source: Any, state: Any) -> str:
    if not source.enabled:
        return "off"
    if state is None or state.last_poll_at is None:
        return "new"
    if state.disabled_reason:
        return "disabled"
    if state.consecutive_failures:
        return "failing"
    return "ok"


def _every(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _cmd_sources_test(args: argparse.Namespace) -> int:
    from sqlmodel import Session

    from connectors.base import ConnectorError, RateLimited
    from monitor.pipeline import Runner
    from monitor.store import SourceState

    settings = _settings(args)
    try:
        source = settings.source(args.source_id)
    except KeyError:
        known = ", ".join(s.id for s in settings.sources) or "none"
        print(f"unknown source {args.source_id!r}; known: {known}", file=sys.stderr)
        return 2
    runner = Runner(settings)
    connector = runner.connector(source)
    with Session(runner.engine) as session:
        state = session.get(SourceState, source.id)
    cursor = state.cursor if (args.from_cursor and state) else None
    budget = connector.daily_budget()
    if budget is not None:
        connector.remaining_budget = budget
    try:
        batch = connector.fetch(cursor)
    except RateLimited as exc:
        print(f"RATE LIMITED: {exc}")
        return 1
    except ConnectorError as exc:
        print(f"FAILED ({type(exc).__name__}): {exc}")
        return 1
    finally:
        runner.close()
    matcher = runner.matchers[source.school]
    about = [m for m in batch.mentions if not source.require_mention or matcher.matches(m.title, m.text)]
    print(f"source {source.id} ({source.connector}): {len(batch.mentions)} items, "
          f"{len(about)} about {settings.school(source.school).name}, cost {batch.cost}")
    for mention in batch.mentions[:10]:
        mark = "*" if mention in about else " "
        text = (mention.title or mention.text).replace("\n", " ")[:90]
        print(f" {mark} {mention.published_at:%Y-%m-%d %H:%M} {mention.author or '-'}: {text}")
    print(f"next cursor: {batch.next_cursor or '(none)'}")
    if state and state.not_before:
        print(f"stored rate-limit/backoff: not before {state.not_before:%Y-%m-%d %H:%M} UTC")
    if budget is not None:
        print(f"daily budget: {budget}; this fetch cost {batch.cost}")
    print("nothing was stored and no alert was sent")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
