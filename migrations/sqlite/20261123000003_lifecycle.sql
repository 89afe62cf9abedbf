-- The whole token lifecycle: rotation with a grace period, usage-limited and rate-limited
-- tokens, token types with templates, and an audit trail written with every change.

-- Rotation: the previous secret's hash keeps verifying until previous_hash_expire_time.
ALTER TABLE tokens ADD COLUMN previous_secret_hash BLOB;
ALTER TABLE tokens ADD COLUMN previous_hash_expire_time TEXT;
CREATE UNIQUE INDEX tokens_previous_secret_hash_key ON tokens (previous_secret_hash)
    WHERE previous_secret_hash IS NOT NULL;
-- Usage limits: uses counts successful verifications, consumed atomically, never past max_uses.
ALTER TABLE tokens ADD COLUMN max_uses INTEGER;
ALTER TABLE tokens ADD COLUMN uses INTEGER NOT NULL DEFAULT 0;
-- Rate limits: at most rate_limit_requests per rate_limit_interval_ms, per replica.
ALTER TABLE tokens ADD COLUMN rate_limit_requests INTEGER;
ALTER TABLE tokens ADD COLUMN rate_limit_interval_ms INTEGER;
-- Listing filters.
CREATE INDEX tokens_token_type_idx ON tokens (token_type, id);

-- Token types and their templates.
CREATE TABLE token_types (
    id           TEXT PRIMARY KEY NOT NULL,
    display_name TEXT NOT NULL,
    description  TEXT NOT NULL,
    template     TEXT NOT NULL,
    builtin      BOOLEAN NOT NULL,
    create_time  TEXT NOT NULL,
    update_time  TEXT NOT NULL,
    revision     INTEGER NOT NULL DEFAULT 1
);

-- The audit trail: one row per management action (and failed management authentication).
CREATE TABLE audit_events (
    id          BLOB PRIMARY KEY NOT NULL,
    time        TEXT NOT NULL,
    actor_id    BLOB,
    actor_owner TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    target_owner TEXT NOT NULL,
    changes     TEXT NOT NULL,
    client_ip   TEXT NOT NULL,
    detail      TEXT NOT NULL
);
CREATE INDEX audit_events_target_idx ON audit_events (target, id);
CREATE INDEX audit_events_actor_idx ON audit_events (actor_id, id);
CREATE INDEX audit_events_action_idx ON audit_events (action, id);
CREATE INDEX audit_events_time_idx ON audit_events (time);
CREATE INDEX audit_events_target_owner_idx ON audit_events (target_owner, id);
