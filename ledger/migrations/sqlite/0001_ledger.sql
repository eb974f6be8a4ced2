-- The SQLite ledger's tables. Ids (u64 in Rust) are stored as INTEGER (i64); the ledger
-- refuses ids above 2^63 - 1. Whole records are stored codec-encoded (cloacina_codec) and
-- sealed with a crc32; records stored in columns keep the crc32 of their fields in `crc`.
-- The format version row of `ledger_meta` is written by the ledger after migrating.

CREATE TABLE ledger_meta (
    key   TEXT    NOT NULL PRIMARY KEY,
    value INTEGER NOT NULL
);

CREATE TABLE boundaries (
    reactor        TEXT    NOT NULL,
    seq            INTEGER NOT NULL,
    source         TEXT    NOT NULL,
    received_at_us INTEGER NOT NULL,
    value          BLOB    NOT NULL,
    crc            INTEGER NOT NULL,
    PRIMARY KEY (reactor, seq)
) WITHOUT ROWID;

CREATE TABLE firings (
    reactor     TEXT    NOT NULL,
    firing_id   INTEGER NOT NULL,
    fired_at_us INTEGER NOT NULL,
    record      BLOB    NOT NULL,
    PRIMARY KEY (reactor, firing_id)
) WITHOUT ROWID;

CREATE INDEX firings_by_time ON firings (reactor, fired_at_us);

CREATE TABLE checkpoints (
    owner TEXT    NOT NULL,
    key   TEXT    NOT NULL,
    value BLOB    NOT NULL,
    at_us INTEGER NOT NULL,
    crc   INTEGER NOT NULL,
    PRIMARY KEY (owner, key)
);

CREATE TABLE snapshots (
    reactor TEXT NOT NULL PRIMARY KEY,
    record  BLOB NOT NULL
);
