-- Sessions shared with another owner at a role (issue 16): that owner's credentials
-- reach the session with at most this role.
CREATE TABLE session_shares (
    session_id  TEXT NOT NULL,
    owner_id    TEXT NOT NULL REFERENCES owners(id),
    role        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (session_id, owner_id)
);
CREATE INDEX session_shares_by_owner ON session_shares(owner_id, created_at);
