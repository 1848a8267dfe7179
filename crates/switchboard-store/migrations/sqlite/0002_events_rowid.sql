-- The logs move from WITHOUT ROWID tables clustered by (session_id, seq) to ordinary
-- tables in append order with an index on (session_id, seq). A WITHOUT ROWID row keeps
-- at most about 1 KB on its b-tree page (a rowid table row: about 4 KB), so every
-- message over that spilled into an overflow page of its own and the file grew eight
-- times faster than its contents; and appends from many sessions at once landed on
-- as many scattered pages. Now rows are appended at the end of the table, densely.

CREATE TABLE events_by_time (
    id          INTEGER PRIMARY KEY,
    session_id  TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    direction   TEXT NOT NULL,
    kind        TEXT NOT NULL,
    uuid        TEXT,
    payload     TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    request_id  TEXT,
    delivery    TEXT
);
INSERT INTO events_by_time (session_id, seq, direction, kind, uuid, payload, created_at,
    request_id, delivery)
    SELECT session_id, seq, direction, kind, uuid, payload, created_at, request_id, delivery
    FROM events ORDER BY created_at, session_id, seq;
DROP TABLE events;
ALTER TABLE events_by_time RENAME TO events;
CREATE UNIQUE INDEX events_by_seq ON events(session_id, seq);
CREATE UNIQUE INDEX events_by_uuid ON events(session_id, uuid) WHERE uuid IS NOT NULL;
CREATE INDEX events_by_request ON events(session_id, request_id) WHERE request_id IS NOT NULL;

CREATE TABLE internal_events_by_time (
    id             INTEGER PRIMARY KEY,
    session_id     TEXT NOT NULL,
    seq            INTEGER NOT NULL,
    event_type     TEXT NOT NULL,
    payload        TEXT NOT NULL,
    is_compaction  INTEGER NOT NULL,
    agent_id       TEXT,
    created_at     INTEGER NOT NULL
);
INSERT INTO internal_events_by_time (session_id, seq, event_type, payload, is_compaction,
    agent_id, created_at)
    SELECT session_id, seq, event_type, payload, is_compaction, agent_id, created_at
    FROM internal_events ORDER BY created_at, session_id, seq;
DROP TABLE internal_events;
ALTER TABLE internal_events_by_time RENAME TO internal_events;
CREATE UNIQUE INDEX internal_events_by_seq ON internal_events(session_id, seq);

-- A session's last sequence number and last activity are read off its log now
-- (sessions.last_seq and sessions.last_activity_at are no longer kept up to date), so
-- an append no longer rewrites the session's row as well.
