-- Tokens. The secret itself is never stored: only its SHA-256, uniquely indexed.
-- Ids are 16-byte UUID blobs; times are RFC 3339 text in UTC; lists and maps are JSON text.
CREATE TABLE tokens (
    id             BLOB PRIMARY KEY NOT NULL,
    secret_hash    BLOB NOT NULL,
    display_hint   TEXT NOT NULL,
    name           TEXT NOT NULL,
    owner          TEXT NOT NULL,
    token_type     TEXT NOT NULL,
    description    TEXT NOT NULL,
    permissions    TEXT NOT NULL,
    read_only      BOOLEAN NOT NULL,
    allowed_cidrs  TEXT NOT NULL,
    allowed_hosts  TEXT NOT NULL,
    bindings       TEXT NOT NULL,
    metadata       TEXT NOT NULL,
    enabled        BOOLEAN NOT NULL,
    create_time    TEXT NOT NULL,
    update_time    TEXT NOT NULL,
    last_used_time TEXT,
    last_used_ip   TEXT,
    use_count      INTEGER NOT NULL DEFAULT 0,
    expire_time    TEXT,
    created_by     BLOB,
    revision       INTEGER NOT NULL DEFAULT 1,
    CONSTRAINT tokens_secret_hash_key UNIQUE (secret_hash),
    CONSTRAINT tokens_owner_name_key UNIQUE (owner, name),
    CONSTRAINT tokens_secret_hash_len CHECK (length(secret_hash) = 32)
);

-- Keyset pagination of one owner's tokens.
CREATE INDEX tokens_owner_id_idx ON tokens (owner, id);

-- One-time facts about the store, e.g. that the first admin token was made.
CREATE TABLE system_state (
    key         TEXT PRIMARY KEY NOT NULL,
    value       TEXT NOT NULL,
    update_time TEXT NOT NULL
);
