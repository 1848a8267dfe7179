-- The same schema as migrations/sqlite/0001_initial.sql, in PostgreSQL types.
--
-- Times are milliseconds since the Unix epoch and sequence numbers are counters, both
-- BIGINT. Counts that hold a Rust u32 (max_sessions, deliveries) are BIGINT too, since
-- INTEGER stops at 2^31 - 1. JSON stays TEXT so that what is read back is byte-for-byte
-- what the server stored, as in SQLite; JSONB would reorder keys and drop whitespace.
-- Ids that queries sort or compare with `<` use the "C" collation, so that the order is
-- the byte order SQLite uses whatever the database's default locale is.

-- Owners hold keys; everything else belongs to exactly one owner.
CREATE TABLE owners (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);

-- Every bearer credential the server issues: API keys, environment secrets and
-- session-ingress tokens. Only a hash of the secret part is kept.
CREATE TABLE credentials (
    id           TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,
    owner_id     TEXT NOT NULL REFERENCES owners(id),
    scope        TEXT,
    work_id      TEXT,
    name         TEXT NOT NULL DEFAULT '',
    secret_hash  TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT,
    revoked_at   BIGINT
);
CREATE INDEX credentials_by_scope ON credentials(kind, scope);

CREATE TABLE environments (
    id               TEXT PRIMARY KEY,
    owner_id         TEXT NOT NULL REFERENCES owners(id),
    machine_name     TEXT NOT NULL,
    directory        TEXT NOT NULL,
    branch           TEXT NOT NULL,
    git_repo_url     TEXT,
    max_sessions     BIGINT NOT NULL,
    metadata         TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    last_poll_at     BIGINT NOT NULL,
    deregistered_at  BIGINT
);

CREATE TABLE sessions (
    id                 TEXT COLLATE "C" PRIMARY KEY,
    owner_id           TEXT NOT NULL REFERENCES owners(id),
    environment_id     TEXT,
    title              TEXT,
    status             TEXT NOT NULL,
    session_context    TEXT NOT NULL,
    source             TEXT,
    permission_mode    TEXT,
    use_code_sessions  BOOLEAN NOT NULL,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    archived_at        BIGINT,
    last_seq           BIGINT NOT NULL DEFAULT 0,
    last_activity_at   BIGINT,
    worker_cursor      BIGINT NOT NULL DEFAULT 0,
    worker_epoch       BIGINT NOT NULL DEFAULT 0,
    external_metadata  TEXT,
    requires_action    TEXT
);
CREATE INDEX sessions_by_owner ON sessions(owner_id, created_at);

CREATE TABLE work_items (
    id              TEXT COLLATE "C" PRIMARY KEY,
    environment_id  TEXT NOT NULL,
    session_id      TEXT NOT NULL,
    state           TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    delivered_at    BIGINT,
    acked_at        BIGINT,
    heartbeat_at    BIGINT,
    stopped_at      BIGINT,
    deliveries      BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX work_items_pending ON work_items(environment_id, state, created_at);
CREATE INDEX work_items_by_session ON work_items(session_id, state);

-- The session log: one ordered sequence per session, both directions.
CREATE TABLE events (
    session_id  TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    direction   TEXT NOT NULL,
    kind        TEXT NOT NULL,
    uuid        TEXT,
    payload     TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    request_id  TEXT,
    delivery    TEXT,
    PRIMARY KEY (session_id, seq)
);
CREATE UNIQUE INDEX events_by_uuid ON events(session_id, uuid) WHERE uuid IS NOT NULL;
CREATE INDEX events_by_request ON events(session_id, request_id) WHERE request_id IS NOT NULL;

-- The v2 worker's transcript (internal events): stored for --resume, never shown.
CREATE TABLE internal_events (
    session_id     TEXT NOT NULL,
    seq            BIGINT NOT NULL,
    event_type     TEXT NOT NULL,
    payload        TEXT NOT NULL,
    is_compaction  BOOLEAN NOT NULL,
    agent_id       TEXT,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (session_id, seq)
);

-- Keys that sign worker JWTs; the newest live one signs, every live one verifies.
CREATE TABLE signing_keys (
    id          TEXT COLLATE "C" PRIMARY KEY,
    secret      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    retired_at  BIGINT
);
