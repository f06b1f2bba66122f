"""The ledger's schema: named migrations, applied in order by :meth:`Ledger.migrate`."""

from __future__ import annotations

# Named migrations, applied in order; each runs in the same transaction as the row that
# records it, so a crash can never leave a half-applied schema.
MIGRATIONS: list[tuple[str, list[str]]] = [
    (
        "0001_core",
        [
            """CREATE TABLE requests (
                id INTEGER PRIMARY KEY,
                ref TEXT NOT NULL UNIQUE,
                policy TEXT NOT NULL,
                regulation TEXT NOT NULL,
                scope TEXT NOT NULL,
                status TEXT NOT NULL,
                received TEXT NOT NULL,
                due TEXT NOT NULL,
                extended_days INTEGER NOT NULL DEFAULT 0,
                subject_index TEXT NOT NULL,
                identifier_indexes TEXT NOT NULL DEFAULT '[]',
                duplicate_of INTEGER REFERENCES requests(id),
                payload BLOB,
                purged_at TEXT,
                created_at TEXT NOT NULL,
                updated_at TEXT NOT NULL
            )""",
            "CREATE INDEX requests_subject ON requests(subject_index, policy)",
            """CREATE TABLE events (
                seq INTEGER PRIMARY KEY,
                ts TEXT NOT NULL,
                kind TEXT NOT NULL,
                request_id INTEGER,
                version_id INTEGER,
                data TEXT NOT NULL,
                prev_hash TEXT NOT NULL,
                hash TEXT NOT NULL
            )""",
            "CREATE INDEX events_request ON events(request_id)",
            """CREATE TRIGGER events_no_update BEFORE UPDATE ON events
               BEGIN SELECT RAISE(ABORT, 'events are append-only'); END""",
            """CREATE TRIGGER events_no_delete BEFORE DELETE ON events
               BEGIN SELECT RAISE(ABORT, 'events are append-only'); END""",
            """CREATE TABLE versions (
                id INTEGER PRIMARY KEY,
                parent INTEGER REFERENCES versions(id),
                kind TEXT NOT NULL,
                base_path TEXT,
                base_sha256 TEXT,
                adapter_path TEXT,
                adapter_sha256 TEXT,
                requests TEXT NOT NULL DEFAULT '[]',
                status TEXT NOT NULL,
                metrics TEXT NOT NULL DEFAULT '{}',
                created_at TEXT NOT NULL
            )""",
            """CREATE TABLE aliases (
                name TEXT PRIMARY KEY,
                version_id INTEGER NOT NULL REFERENCES versions(id),
                updated_at TEXT NOT NULL
            )""",
            """CREATE TABLE alias_history (
                id INTEGER PRIMARY KEY,
                alias TEXT NOT NULL,
                version_id INTEGER NOT NULL,
                previous_version_id INTEGER,
                reason TEXT NOT NULL,
                ts TEXT NOT NULL
            )""",
            """CREATE TABLE verifications (
                id INTEGER PRIMARY KEY,
                version_id INTEGER NOT NULL REFERENCES versions(id),
                check_name TEXT NOT NULL,
                passed INTEGER NOT NULL,
                figures TEXT NOT NULL,
                reasons TEXT NOT NULL,
                ts TEXT NOT NULL
            )""",
        ],
    ),
    (
        "0002_plans_and_steps",
        [
            # The planned prompt set, encrypted with the request's payload key; counts and
            # hash in clear so evidence survives crypto-shredding.
            """CREATE TABLE plans (
                request_id INTEGER PRIMARY KEY REFERENCES requests(id),
                payload BLOB,
                counts TEXT NOT NULL,
                sha256 TEXT NOT NULL,
                created_at TEXT NOT NULL
            )""",
            # Where a failed request stopped, how often it was tried, and approvals.
            "ALTER TABLE requests ADD COLUMN failed_step TEXT",
            "ALTER TABLE requests ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE requests ADD COLUMN approved_at TEXT",
        ],
    ),
    (
        "0003_verification_verdicts",
        [
            # pass, fail or no_signal (a check that had nothing to judge); passed stays as
            # the verdict's boolean for the queries that only ask whether it passed.
            "ALTER TABLE verifications ADD COLUMN verdict TEXT",
            "UPDATE verifications SET verdict = CASE passed WHEN 1 THEN 'pass' ELSE 'fail' END",
        ],
    ),
    (
        "0004_row_evidence_and_signed_head",
        [
            # What each event wrote to the state tables ({"table/key": {column: value}}),
            # hashed with the event, so `ledger verify` can explain every row by its events.
            "ALTER TABLE events ADD COLUMN writes TEXT NOT NULL DEFAULT '{}'",
            # The latest (seq, hash), signed with keys/ledger-head.key on every append.
            """CREATE TABLE head (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                seq INTEGER NOT NULL,
                hash TEXT NOT NULL,
                signature TEXT NOT NULL
            )""",
        ],
    ),
    (
        "0005_salted_index_evidence",
        [
            # A random salt per request: events record its blind indexes salted, and purge
            # drops the salt with the indexes, so the append-only events cannot confirm a
            # purged subject (rows from before keep their plain evidence: salt NULL).
            "ALTER TABLE requests ADD COLUMN index_salt BLOB",
        ],
    ),
]
