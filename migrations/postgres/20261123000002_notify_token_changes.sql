-- Every change to a token that matters to Verify is announced on the token_changes channel,
-- with the hex SHA-256 of the token's secret as payload, so every replica can evict it from
-- its cache. NOTIFY is transactional: listeners hear of a change only once it is committed.
-- Usage bookkeeping (last_used_time, use_count) does not bump revision and stays silent.
CREATE FUNCTION tokens_notify_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('token_changes', encode(OLD.secret_hash, 'hex'));
    ELSE
        PERFORM pg_notify('token_changes', encode(NEW.secret_hash, 'hex'));
        IF TG_OP = 'UPDATE' AND OLD.secret_hash <> NEW.secret_hash THEN
            PERFORM pg_notify('token_changes', encode(OLD.secret_hash, 'hex'));
        END IF;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER tokens_notify_insert_delete
    AFTER INSERT OR DELETE ON tokens
    FOR EACH ROW EXECUTE FUNCTION tokens_notify_change();

CREATE TRIGGER tokens_notify_update
    AFTER UPDATE ON tokens
    FOR EACH ROW
    WHEN (OLD.revision IS DISTINCT FROM NEW.revision OR OLD.secret_hash IS DISTINCT FROM NEW.secret_hash)
    EXECUTE FUNCTION tokens_notify_change();
