//! Leaked secrets: finding the token a secret belongs to whatever its state, and making a
//! leaked secret stop working, with its audit event, in one transaction.

use chrono::{DateTime, Utc};

use super::{
    commit,
    rows::{COLUMNS, TokenRow},
};
use crate::{
    domain::{
        leak::{self, Effect},
        secret::SecretHash,
        token::Token,
    },
    store::{LeakAudit, Leaked, StoreError},
};

impl_sql_store! {
    impl {
        pub(super) async fn lookup(&self, hash: &SecretHash) -> Result<Option<Token>, StoreError> {
            let row: Option<TokenRow> = sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM tokens WHERE secret_hash = $1 \
                 UNION ALL SELECT {COLUMNS} FROM tokens WHERE previous_secret_hash = $1"
            ))
            .bind(&hash.as_bytes()[..])
            .fetch_optional(&mut *self.acquire().await?)
            .await?;
            row.map(Token::try_from).transpose()
        }

        pub(super) async fn lookup_many(
            &self,
            hashes: &[SecretHash],
        ) -> Result<Vec<Token>, StoreError> {
            if hashes.is_empty() {
                return Ok(Vec::new());
            }
            let params: Vec<String> = (1..=hashes.len()).map(|i| format!("${i}")).collect();
            let list = params.join(", ");
            let sql = format!(
                "SELECT {COLUMNS} FROM tokens WHERE secret_hash IN ({list}) \
                 UNION ALL SELECT {COLUMNS} FROM tokens WHERE previous_secret_hash IN ({list})"
            );
            let mut statement = sqlx::query_as::<DB, TokenRow>(&sql);
            for hash in hashes {
                statement = statement.bind(&hash.as_bytes()[..]);
            }
            statement
                .fetch_all(&mut *self.acquire().await?)
                .await?
                .into_iter()
                .map(Token::try_from)
                .collect()
        }

        pub(super) async fn end_leaked(
            &self,
            hash: &SecretHash,
            now: DateTime<Utc>,
            audit: LeakAudit<'_>,
        ) -> Result<Option<Leaked>, StoreError> {
            let mut tx = self.begin_write().await?;
            let sql = format!(
                "SELECT {COLUMNS} FROM tokens WHERE secret_hash = $1 OR previous_secret_hash = $1{}",
                DB::LOCK_ROWS
            );
            let Some(row) = sqlx::query_as::<DB, TokenRow>(&sql)
                .bind(&hash.as_bytes()[..])
                .fetch_optional(&mut *tx)
                .await?
            else {
                return Ok(None);
            };
            let before = Token::try_from(row)?;
            let Some((which, effect)) = leak::effect(&before, hash, now) else {
                return Ok(None);
            };
            // The revision moves, so that a call in flight that authenticated with this
            // token before the report changes nothing after it (and every replica hears of
            // the change). A token whose current secret leaked remembers it, so that it
            // cannot be enabled again until a rotation replaces that secret.
            let after = match effect {
                Effect::Disable | Effect::MarkReported => {
                    let sql = format!(
                        "UPDATE tokens SET enabled = $1, secret_reported_time = $2, \
                         update_time = $2, revision = revision + 1 WHERE id = $3 \
                         RETURNING {COLUMNS}"
                    );
                    let row = sqlx::query_as::<DB, TokenRow>(&sql)
                        .bind(false)
                        .bind(now)
                        .bind(before.id)
                        .fetch_one(&mut *tx)
                        .await?;
                    Token::try_from(row)?
                }
                Effect::EndGrace => {
                    let sql = format!(
                        "UPDATE tokens SET previous_hash_expire_time = $1, update_time = $2, \
                         revision = revision + 1 WHERE id = $3 RETURNING {COLUMNS}"
                    );
                    let row = sqlx::query_as::<DB, TokenRow>(&sql)
                        .bind(leak::GRACE_ENDED)
                        .bind(now)
                        .bind(before.id)
                        .fetch_one(&mut *tx)
                        .await?;
                    Token::try_from(row)?
                }
                Effect::AlreadyRevoked => before.clone(),
            };
            let event = audit(&before, which, effect);
            Self::insert_audit(&mut *tx, &event, &before.owner).await?;
            commit(tx).await?;
            Ok(Some(Leaked {
                before,
                after,
                which,
                effect,
            }))
        }
    }
}
