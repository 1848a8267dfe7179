-- Who may do what (issue 16): roles on credentials, devices, approval policy, audit log.

-- What a credential may do: 'viewer', 'approver', 'driver' or 'admin'. Every key and
-- browser that existed before could do everything, so they are admins.
ALTER TABLE credentials ADD COLUMN role TEXT NOT NULL DEFAULT 'admin';
-- Devices: when and from where a credential was last used, and by which user agent.
ALTER TABLE credentials ADD COLUMN last_used_at INTEGER;
ALTER TABLE credentials ADD COLUMN last_address TEXT;
ALTER TABLE credentials ADD COLUMN user_agent TEXT;
CREATE INDEX credentials_by_owner ON credentials(owner_id, kind);

-- Approval rules, per owner and optionally per environment or session; the first that
-- matches (lowest position) answers a permission request.
CREATE TABLE policy_rules (
    id              TEXT PRIMARY KEY,
    owner_id        TEXT NOT NULL REFERENCES owners(id),
    environment_id  TEXT,
    session_id      TEXT,
    position        INTEGER NOT NULL,
    tool            TEXT NOT NULL,
    pattern         TEXT,
    decision        TEXT NOT NULL,
    created_at      INTEGER NOT NULL
);
CREATE INDEX policy_rules_by_owner ON policy_rules(owner_id, position);

-- Per owner: the answer when no rule matches, and how long a request may wait for a
-- person. No row: 'ask', no timeout.
CREATE TABLE policy_settings (
    owner_id          TEXT PRIMARY KEY REFERENCES owners(id),
    default_decision  TEXT NOT NULL,
    timeout_ms        INTEGER,
    updated_at        INTEGER NOT NULL
);

-- Who did what, when, from where; appended only. `detail` is JSON.
CREATE TABLE audit_log (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    owner_id       TEXT NOT NULL,
    at             INTEGER NOT NULL,
    action         TEXT NOT NULL,
    credential_id  TEXT,
    address        TEXT,
    user_agent     TEXT,
    session_id     TEXT,
    detail         TEXT NOT NULL
);
CREATE INDEX audit_log_by_owner ON audit_log(owner_id, id);
CREATE INDEX audit_log_by_session ON audit_log(session_id, id);
