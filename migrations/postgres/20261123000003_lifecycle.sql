-- The whole token lifecycle: rotation with a grace period, usage-limited and rate-limited
-- tokens, token types with templates, and an audit trail written with every change.

-- Rotation: the previous secret's hash keeps verifying until previous_hash_expire_time.
ALTER TABLE tokens ADD COLUMN previous_secret_hash BYTEA;
ALTER TABLE tokens ADD COLUMN previous_hash_expire_time TIMESTAMPTZ;
CREATE UNIQUE INDEX tokens_previous_secret_hash_key ON tokens (previous_secret_hash)
    WHERE previous_secret_hash IS NOT NULL;
-- Usage limits: uses counts successful verifications, consumed atomically, never past max_uses.
ALTER TABLE tokens ADD COLUMN max_uses BIGINT;
ALTER TABLE tokens ADD COLUMN uses BIGINT NOT NULL DEFAULT 0;
-- Rate limits: at most rate_limit_requests per rate_limit_interval_ms, per replica.
ALTER TABLE tokens ADD COLUMN rate_limit_requests BIGINT;
ALTER TABLE tokens ADD COLUMN rate_limit_interval_ms BIGINT;
-- Listing filters.
CREATE INDEX tokens_token_type_idx ON tokens (token_type, id);

-- Every secret a token has is announced when the token changes, so that every replica
-- evicts the current and the previous secret alike.
CREATE OR REPLACE FUNCTION tokens_notify_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    hash BYTEA;
BEGIN
    FOR hash IN
        SELECT DISTINCT h FROM unnest(ARRAY[
            CASE WHEN TG_OP <> 'INSERT' THEN OLD.secret_hash END,
            CASE WHEN TG_OP <> 'INSERT' THEN OLD.previous_secret_hash END,
            CASE WHEN TG_OP <> 'DELETE' THEN NEW.secret_hash END,
            CASE WHEN TG_OP <> 'DELETE' THEN NEW.previous_secret_hash END
        ]) AS h WHERE h IS NOT NULL
    LOOP
        PERFORM pg_notify('token_changes', encode(hash, 'hex'));
    END LOOP;
    RETURN NULL;
END;
$$;

-- Token types and their templates.
CREATE TABLE token_types (
    id           TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    description  TEXT NOT NULL,
    template     JSONB NOT NULL,
    builtin      BOOLEAN NOT NULL,
    create_time  TIMESTAMPTZ NOT NULL,
    update_time  TIMESTAMPTZ NOT NULL,
    revision     BIGINT NOT NULL DEFAULT 1
);

-- The audit trail: one row per management action (and failed management authentication).
CREATE TABLE audit_events (
    id          UUID PRIMARY KEY,
    time        TIMESTAMPTZ NOT NULL,
    actor_id    UUID,
    actor_owner TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    target_owner TEXT NOT NULL,
    changes     JSONB NOT NULL,
    client_ip   TEXT NOT NULL,
    detail      TEXT NOT NULL
);
CREATE INDEX audit_events_target_idx ON audit_events (target, id);
CREATE INDEX audit_events_actor_idx ON audit_events (actor_id, id);
CREATE INDEX audit_events_action_idx ON audit_events (action, id);
CREATE INDEX audit_events_time_idx ON audit_events (time);
CREATE INDEX audit_events_target_owner_idx ON audit_events (target_owner, id);
