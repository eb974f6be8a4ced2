-- The ledger's tables. They live in the ledger's own schema (`?schema=NAME`, default
-- `cloacina`): every tenant has its own set, and its own `_sqlx_migrations` history.
-- Names are COLLATE "C": byte-order comparisons, the cheapest for keys nobody sorts by.
-- u64 ids are stored as BIGINT (the backend refuses ids of 2^63 and above).
-- Whole records (`record`) are codec-encoded and sealed with a crc32; records stored in
-- columns keep the crc32 of their fields in `crc` (ledger format version 2).

-- `format_version`: the codec format version (cloacina_codec::FORMAT_VERSION) the records
-- were written with; checked on open before anything is migrated or written.
-- `flushes`: bumped by flush() (a synchronous commit that writes WAL).
CREATE TABLE meta (
    key   TEXT COLLATE "C" PRIMARY KEY,
    value BIGINT NOT NULL
);

CREATE TABLE boundaries (
    reactor        TEXT COLLATE "C" NOT NULL,
    seq            BIGINT NOT NULL,
    source         TEXT COLLATE "C" NOT NULL,
    received_at_us BIGINT NOT NULL,
    value          BYTEA NOT NULL,
    crc            BIGINT NOT NULL,
    PRIMARY KEY (reactor, seq)
);

-- `record`: the whole FiringRecord, codec-encoded.
CREATE TABLE firings (
    reactor     TEXT COLLATE "C" NOT NULL,
    firing_id   BIGINT NOT NULL,
    fired_at_us BIGINT NOT NULL,
    record      BYTEA NOT NULL,
    PRIMARY KEY (reactor, firing_id)
);

CREATE INDEX firings_by_time ON firings (reactor, fired_at_us);

CREATE TABLE checkpoints (
    owner TEXT COLLATE "C" NOT NULL,
    key   TEXT COLLATE "C" NOT NULL,
    value BYTEA NOT NULL,
    at_us BIGINT NOT NULL,
    crc   BIGINT NOT NULL,
    PRIMARY KEY (owner, key)
);

-- `record`: the whole SnapshotRecord, codec-encoded.
CREATE TABLE snapshots (
    reactor TEXT COLLATE "C" PRIMARY KEY,
    record  BYTEA NOT NULL
);
