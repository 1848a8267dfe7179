-- Notifications (issue 15): which events call an owner back, and where to.
-- The same schema as migrations/sqlite/0005_notifications.sql, in PostgreSQL types.

-- Per owner: the events that notify (a JSON array of names). No row: the defaults.
CREATE TABLE notify_settings (
    owner_id    TEXT PRIMARY KEY REFERENCES owners(id),
    events      TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);

-- Per owner and kind ('webhook', 'ntfy'): where to send. `secret` is the webhook's
-- HMAC key or the ntfy access token.
CREATE TABLE notify_channels (
    owner_id    TEXT NOT NULL REFERENCES owners(id),
    kind        TEXT NOT NULL,
    url         TEXT NOT NULL,
    secret      TEXT,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (owner_id, kind)
);

-- Browsers subscribed to Web Push (RFC 8030): the push service's endpoint and the
-- subscription's keys for RFC 8291 encryption (base64url).
CREATE TABLE push_subscriptions (
    id          TEXT PRIMARY KEY,
    owner_id    TEXT NOT NULL REFERENCES owners(id),
    endpoint    TEXT NOT NULL UNIQUE,
    p256dh      TEXT NOT NULL,
    auth        TEXT NOT NULL,
    user_agent  TEXT,
    created_at  BIGINT NOT NULL
);
CREATE INDEX push_subscriptions_by_owner ON push_subscriptions(owner_id);

-- The server's VAPID key pair (RFC 8292): one P-256 private key, base64url, made once.
CREATE TABLE vapid_keys (
    id           BIGINT PRIMARY KEY CHECK (id = 1),
    private_key  TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);
