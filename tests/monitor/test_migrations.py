"""Alembic migrations: a fresh database, a pre-migration one, a killed or concurrent start.

Each test runs on SQLite, and on PostgreSQL when $SCHOOLWATCH_TEST_DB names a server.
"""
from __future__ import annotations

import io
import re
import threading
from contextlib import redirect_stdout
from datetime import UTC, datetime
from pathlib import Path
from unittest import mock

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlmodel import Session, select

import monitor
from monitor import migrations
from monitor.store import AuditEntry, Incident, MentionRow, init_db, make_engine
from tests.support.database import database_url, requires_postgres

FIRST_TABLES = {"source_state", "seen_key", "incident", "mention", "assessment", "outbox",
                "audit_log", "suppression_rule", "feedback_example", "evidence_item"}
APP_TABLES = FIRST_TABLES | {"source_lease"}


@pytest.fixture
def url(tmp_path) -> str:
    return database_url(tmp_path)


@pytest.fixture
def engine(url):
    engine = make_engine(url)
    yield engine
    engine.dispose()


def first_release():
    """The module of revision 0001, with its frozen schema()."""
    return ScriptDirectory.from_config(migrations.config()).get_revision("0001").module


def differences(engine, metadata: sa.MetaData | None = None) -> list:
    """What autogenerate would change to make the database match the models."""
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, migrations.metadata() if metadata is None else metadata)


def tables(engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def create_all_like_before_migrations(engine, only: set[str] | None = None) -> None:
    """What init_db of the first release did: create_all, then the audit-log triggers."""
    schema = first_release().schema()
    schema.create_all(engine, tables=[t for t in schema.sorted_tables
                                      if only is None or t.name in only])
    if only is None or "audit_log" in only:
        with engine.begin() as connection:
            first_release().make_append_only(connection)


def test_a_fresh_database_migrated_to_head_matches_the_models_exactly(engine):
    init_db(engine)
    assert tables(engine) == APP_TABLES | {"alembic_version"}
    assert differences(engine) == []
    with engine.connect() as connection:
        assert MigrationContext.configure(connection).get_current_heads() == (migrations.head(),)


def test_the_comparison_is_not_blind_to_a_missing_index(engine):
    init_db(engine)
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP INDEX ix_outbox_status")
    found = differences(engine)
    assert ("add_index", "ix_outbox_status") in {(d[0], d[1].name) for d in found
                                                 if isinstance(d, tuple)}


def test_the_first_revision_creates_exactly_the_schema_it_froze(engine):
    # Pre-migration databases are checked against schema(): it must stay what 0001 creates.
    with engine.begin() as connection:
        command.upgrade(migrations.config(connection=connection), "0001")
    assert differences(engine, first_release().schema()) == []


def test_every_module_with_a_table_is_known_to_the_migrations():
    package = Path(monitor.__file__).parent
    defining = {".".join(("monitor", *path.relative_to(package).with_suffix("").parts))
                for path in package.rglob("*.py")
                if re.search(r"^class \w+\(.*table=True", path.read_text(), re.MULTILINE)}
    assert defining == set(migrations.MODEL_MODULES), "list the module in MODEL_MODULES"


def test_downgrade_to_nothing_and_back_up_again(url, engine):
    init_db(engine)
    engine.dispose()
    with engine.begin() as connection:
        command.downgrade(migrations.config(connection=connection), "base")
    assert tables(engine) <= {"alembic_version"}
    assert migrations.upgrade(url) == migrations.head()
    assert differences(engine) == []


def test_foreign_keys_are_enforced_again_after_a_migration(engine):
    init_db(engine)
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    with Session(engine) as session, pytest.raises(sa.exc.IntegrityError):
        session.add(MentionRow(platform="x", external_id="1", source_id="s", school_id="h",
                               url="u", canonical_url="u", text="t", text_hash="h",
                               published_at=datetime.now(UTC), fetched_at=datetime.now(UTC),
                               incident_id=404))
        session.commit()


def test_upgrade_and_current_by_url(url):
    assert migrations.current(url) is None
    assert migrations.upgrade(url) == migrations.head()
    assert migrations.current(url) == migrations.head()
    assert migrations.upgrade(url) == migrations.head()  # already there: nothing to do


def test_asking_for_the_revision_of_a_missing_sqlite_file_does_not_create_it(tmp_path):
    missing = tmp_path / "nothing-here.db"
    assert migrations.current(f"sqlite:///{missing}") is None
    assert not missing.exists()


def test_a_database_made_before_migrations_is_stamped_and_keeps_its_rows(engine):
    create_all_like_before_migrations(engine)
    with Session(engine) as session:
        session.add(Incident(school_id="harrowgate", category="safeguarding", title="Kept"))
        session.add(AuditEntry(actor="dsl", action="incident.ack"))
        session.commit()
    init_db(engine)
    with engine.connect() as connection:
        assert MigrationContext.configure(connection).get_current_heads() == (migrations.head(),)
    assert differences(engine) == []
    with Session(engine) as session:
        assert [i.title for i in session.exec(select(Incident))] == ["Kept"]
        entry = session.exec(select(AuditEntry)).one()
        entry.actor = "someone else"
        session.add(entry)
        with pytest.raises(sa.exc.DatabaseError, match="append-only"):
            session.commit()


def test_a_pre_migration_database_missing_later_tables_gets_them(engine):
    later = {"evidence_item", "feedback_example"}
    create_all_like_before_migrations(engine, only=FIRST_TABLES - later)
    init_db(engine)
    assert tables(engine) == APP_TABLES | {"alembic_version"}
    assert differences(engine) == []


def test_tables_from_another_schema_are_not_stamped(engine):
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE incident (id INTEGER PRIMARY KEY, name TEXT)")
    with pytest.raises(migrations.SchemaError, match="table incident does not match"):
        init_db(engine)
    assert "alembic_version" not in tables(engine)


def test_a_start_killed_mid_migration_leaves_nothing_and_the_next_completes(engine):
    real = command.upgrade

    def killed(cfg, revision):
        real(cfg, revision)
        raise KeyboardInterrupt("killed before the commit")

    with mock.patch.object(migrations.command, "upgrade", killed), pytest.raises(KeyboardInterrupt):
        init_db(engine)
    assert tables(engine) == set()
    init_db(engine)
    assert differences(engine) == []


def test_two_processes_starting_on_one_fresh_database_both_succeed(url):
    engines = [make_engine(url) for _ in range(3)]
    barrier = threading.Barrier(len(engines))
    errors: list[BaseException] = []

    def start(engine) -> None:
        barrier.wait()
        try:
            init_db(engine)
        except BaseException as exc:  # reported below, with the others
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(e,)) for e in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert differences(engines[0]) == []
    for engine in engines:
        engine.dispose()


def test_offline_sql_for_both_dialects():
    for url in ("sqlite://", "postgresql+psycopg://nobody@localhost/none"):
        out = io.StringIO()
        with redirect_stdout(out):
            command.upgrade(migrations.config(url), "head", sql=True)
        sql = out.getvalue()
        assert "CREATE TABLE audit_log" in sql and "INSERT INTO alembic_version" in sql, url
        assert "append-only" in sql


@requires_postgres
def test_postgres_audit_log_refuses_update_delete_and_truncate(engine):
    init_db(engine)
    with Session(engine) as session:
        session.add(AuditEntry(actor="dsl", action="incident.ack"))
        session.commit()
    for statement in ("UPDATE audit_log SET actor = 'x'", "DELETE FROM audit_log",
                      "TRUNCATE audit_log"):
        with engine.connect() as connection, pytest.raises(sa.exc.DatabaseError,
                                                           match="append-only"):
            connection.exec_driver_sql(statement)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM audit_log").scalar() == 1


@requires_postgres
def test_postgres_datetimes_are_timestamptz_and_read_back_in_utc(engine):
    init_db(engine)
    columns = {c["name"]: c["type"] for c in sa.inspect(engine).get_columns("outbox")}
    assert columns["next_attempt_at"].timezone is True
    at = datetime(2025, 3, 30, 0, 30, tzinfo=UTC)  # the night the UK clocks go forward
    with Session(engine) as session:
        session.add(AuditEntry(actor="dsl", action="x", at=at))
        session.commit()

    @sa.event.listens_for(engine, "connect")
    def london(dbapi_connection, _record) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET TIME ZONE 'Europe/London'")
        dbapi_connection.commit()

    engine.dispose()
    with Session(engine) as session:
        stored = session.exec(select(AuditEntry.at)).one()
        assert stored == at and stored.utcoffset().total_seconds() == 0
        assert session.exec(select(AuditEntry).where(AuditEntry.at == at)).one()


@requires_postgres
def test_postgres_naive_timestamps_of_an_old_sqlmodel_become_timestamptz(engine):
    # sqlmodel before 0.0.45 made datetime columns `timestamp`; the server wrote local time.
    create_all_like_before_migrations(engine)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            f"ALTER DATABASE \"{engine.url.database}\" SET timezone = 'Europe/London'")
        connection.exec_driver_sql("ALTER TABLE incident ALTER COLUMN first_seen TYPE timestamp")
        connection.exec_driver_sql(
            "INSERT INTO incident (school_id, category, status, title, first_seen, last_seen, "
            "mention_count, revision, escalation_level, legal_hold) VALUES ('harrowgate', "
            "'safeguarding', 'open', 'Old', '2025-07-01 13:00:00', '2025-07-01 12:00:00+00', "
            "1, 0, 0, false)")
    engine.dispose()
    init_db(engine)
    assert differences(engine) == []
    with Session(engine) as session:
        incident = session.exec(select(Incident)).one()
    assert incident.first_seen == incident.last_seen == datetime(2025, 7, 1, 12, tzinfo=UTC)
