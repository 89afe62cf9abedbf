-- Who created whom, kept past deletion: revoking everything a leaked token created must
-- reach the tokens made by a child that was deleted meanwhile.
CREATE TABLE deleted_tokens (
    id          BLOB PRIMARY KEY NOT NULL,
    created_by  BLOB,
    owner       TEXT NOT NULL,
    delete_time TEXT NOT NULL
);
CREATE INDEX deleted_tokens_created_by_idx ON deleted_tokens (created_by);
-- ListTokens(created_by) and the descent of RevokeTokens(created_by).
CREATE INDEX tokens_created_by_idx ON tokens (created_by);

-- Kept by the database itself, in the deleting transaction, whatever deletes the row.
CREATE TRIGGER tokens_keep_lineage AFTER DELETE ON tokens
BEGIN
    INSERT OR IGNORE INTO deleted_tokens (id, created_by, owner, delete_time)
    VALUES (OLD.id, OLD.created_by, OLD.owner, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
END;
