-- When the token's current secret was reported leaked; NULL when it was not, or the token
-- has been rotated since. While set the token cannot be enabled: a report disables the
-- token, and enabling it again without a rotation would bring the leaked secret back.
ALTER TABLE tokens ADD COLUMN secret_reported_time TEXT;
