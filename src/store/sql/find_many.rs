//! Verify's batched lookup: the tokens of many presented secrets in one query, in one
//! prepared statement per connection (Postgres: `= ANY($1)` over a `bytea[]`; SQLite, which
//! has no arrays: `IN (…)` with the batch padded to a power of two, so at most a handful
//! of statements are ever prepared).

use chrono::{DateTime, Utc};
use futures_core::future::BoxFuture;
use sqlx::{Postgres, Sqlite, pool::PoolConnection};

use super::rows::{COLUMNS, TokenRow};
use crate::{
    domain::{secret::SecretHash, token::Token},
    store::StoreError,
};

/// The most secrets one batched lookup takes.
pub const FIND_MANY_MAX: usize = 128;

/// The Postgres statement: one text whatever the batch size.
fn postgres_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "SELECT {COLUMNS} FROM tokens WHERE secret_hash = ANY($1) \
             UNION ALL SELECT {COLUMNS} FROM tokens \
             WHERE previous_secret_hash = ANY($1) AND previous_hash_expire_time > $2"
        )
    })
}

/// The SQLite statement for `n` parameters (a power of two), made once per size.
fn sqlite_sql(n: usize) -> &'static str {
    const SIZES: usize = FIND_MANY_MAX.trailing_zeros() as usize + 1;
    static SQL: [std::sync::OnceLock<String>; SIZES] =
        [const { std::sync::OnceLock::new() }; SIZES];
    SQL[n.trailing_zeros() as usize].get_or_init(|| {
        let list: Vec<String> = (1..=n).map(|i| format!("${i}")).collect();
        let list = list.join(", ");
        format!(
            "SELECT {COLUMNS} FROM tokens WHERE secret_hash IN ({list}) \
             UNION ALL SELECT {COLUMNS} FROM tokens \
             WHERE previous_secret_hash IN ({list}) AND previous_hash_expire_time > ${}",
            n + 1
        )
    })
}

/// Reads the rows of up to [`FIND_MANY_MAX`] secrets, as the backend does it best.
pub trait FindMany: sqlx::Database {
    /// The rows whose current secret, or previous one in its grace period at `now`, has
    /// one of these hashes (not empty, at most [`FIND_MANY_MAX`]).
    fn find_many<'a>(
        conn: &'a mut PoolConnection<Self>,
        hashes: &'a [SecretHash],
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Vec<TokenRow>, sqlx::Error>>;
}

impl FindMany for Postgres {
    fn find_many<'a>(
        conn: &'a mut PoolConnection<Self>,
        hashes: &'a [SecretHash],
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Vec<TokenRow>, sqlx::Error>> {
        Box::pin(async move {
            let list: Vec<&[u8]> = hashes.iter().map(|h| &h.as_bytes()[..]).collect();
            sqlx::query_as::<Postgres, TokenRow>(postgres_sql())
                .bind(list)
                .bind(now)
                .fetch_all(&mut **conn)
                .await
        })
    }
}

impl FindMany for Sqlite {
    fn find_many<'a>(
        conn: &'a mut PoolConnection<Self>,
        hashes: &'a [SecretHash],
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Vec<TokenRow>, sqlx::Error>> {
        Box::pin(async move {
            let n = hashes.len().clamp(1, FIND_MANY_MAX).next_power_of_two();
            let mut statement = sqlx::query_as::<Sqlite, TokenRow>(sqlite_sql(n));
            // Padded with the last hash: a repeated value in IN matches no row twice.
            let last = hashes.last().map_or(&[0u8; 32][..], |h| &h.as_bytes()[..]);
            for i in 0..n {
                statement = statement.bind(hashes.get(i).map_or(last, |h| &h.as_bytes()[..]));
            }
            statement.bind(now).fetch_all(&mut **conn).await
        })
    }
}

impl_sql_store! {
    impl {
        pub(super) async fn find_many(
            &self,
            hashes: &[SecretHash],
            now: DateTime<Utc>,
        ) -> Result<Vec<Token>, StoreError> {
            let mut tokens = Vec::with_capacity(hashes.len());
            for chunk in hashes.chunks(FIND_MANY_MAX) {
                let rows = DB::find_many(&mut self.acquire().await?, chunk, now).await?;
                for row in rows {
                    tokens.push(Token::try_from(row)?);
                }
            }
            Ok(tokens)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_postgres_statement_and_a_few_sqlite_ones() {
        assert!(postgres_sql().contains("= ANY($1)"));
        for n in [1, 2, 64, FIND_MANY_MAX] {
            let sql = sqlite_sql(n);
            assert!(sql.contains(&format!("${n})")), "{sql}");
            assert!(sql.ends_with(&format!("${}", n + 1)), "{sql}");
        }
    }
}
