-- Tokens reported before `secret_reported_time` existed: a disabled token whose current
-- secret the audit trail says was reported (`leak_reported`, secret "current"), and which
-- has not been rotated since, is marked with the last such report's time, so that it too
-- cannot be enabled again with its leaked secret. A token enabled again since is left as
-- it is (README, "When a token leaks": find and rotate those). Writes nothing on a
-- database with no such token, and nothing twice. The same statement as Postgres's, but
-- ids are 16-byte blobs here, and the audit trail names them in their hyphenated form.
UPDATE tokens
SET secret_reported_time = r.time
FROM (
    SELECT target, max(time) AS time
    FROM audit_events
    WHERE action = 'leak_reported' AND json_extract(changes, '$.secret') = 'current'
    GROUP BY target
) AS r
WHERE r.target = 'token/' || lower(
        substr(hex(tokens.id), 1, 8) || '-' || substr(hex(tokens.id), 9, 4) || '-' ||
        substr(hex(tokens.id), 13, 4) || '-' || substr(hex(tokens.id), 17, 4) || '-' ||
        substr(hex(tokens.id), 21, 12))
  AND NOT tokens.enabled
  AND tokens.secret_reported_time IS NULL
  AND NOT EXISTS (
      SELECT 1 FROM audit_events a
      WHERE a.action = 'rotate' AND a.target = r.target AND a.time > r.time
  );
