-- Tokens. The secret itself is never stored: only its SHA-256, uniquely indexed.
CREATE TABLE tokens (
    id             UUID PRIMARY KEY,
    secret_hash    BYTEA NOT NULL,
    display_hint   TEXT NOT NULL,
    name           TEXT NOT NULL,
    owner          TEXT NOT NULL,
    token_type     TEXT NOT NULL,
    description    TEXT NOT NULL,
    permissions    JSONB NOT NULL,
    read_only      BOOLEAN NOT NULL,
    allowed_cidrs  JSONB NOT NULL,
    allowed_hosts  JSONB NOT NULL,
    bindings       JSONB NOT NULL,
    metadata       JSONB NOT NULL,
    enabled        BOOLEAN NOT NULL,
    create_time    TIMESTAMPTZ NOT NULL,
    update_time    TIMESTAMPTZ NOT NULL,
    last_used_time TIMESTAMPTZ,
    last_used_ip   TEXT,
    use_count      BIGINT NOT NULL DEFAULT 0,
    expire_time    TIMESTAMPTZ,
    created_by     UUID,
    revision       BIGINT NOT NULL DEFAULT 1,
    CONSTRAINT tokens_secret_hash_key UNIQUE (secret_hash),
    CONSTRAINT tokens_owner_name_key UNIQUE (owner, name),
    CONSTRAINT tokens_secret_hash_len CHECK (octet_length(secret_hash) = 32)
);

-- Keyset pagination of one owner's tokens.
CREATE INDEX tokens_owner_id_idx ON tokens (owner, id);

-- One-time facts about the store, e.g. that the first admin token was made.
CREATE TABLE system_state (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    update_time TIMESTAMPTZ NOT NULL
);
