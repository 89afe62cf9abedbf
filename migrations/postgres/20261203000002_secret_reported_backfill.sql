-- Tokens reported before `secret_reported_time` existed: a disabled token whose current
-- secret the audit trail says was reported (`leak_reported`, secret "current"), and which
-- has not been rotated since, is marked with the last such report's time, so that it too
-- cannot be enabled again with its leaked secret. A token enabled again since is left as
-- it is (README, "When a token leaks": find and rotate those). Writes nothing on a
-- database with no such token, and nothing twice.
UPDATE tokens t
SET secret_reported_time = r.time
FROM (
    SELECT target, max(time) AS time
    FROM audit_events
    WHERE action = 'leak_reported' AND changes->>'secret' = 'current'
    GROUP BY target
) r
WHERE r.target = 'token/' || t.id::text
  AND NOT t.enabled
  AND t.secret_reported_time IS NULL
  AND NOT EXISTS (
      SELECT 1 FROM audit_events a
      WHERE a.action = 'rotate' AND a.target = r.target AND a.time > r.time
  );
