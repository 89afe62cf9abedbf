//! Usage: uses counted against `max_uses` one at a time, and last-used bookkeeping written
//! in batches.

use uuid::Uuid;

use super::commit;

use crate::store::{StoreError, UsageRecord};

impl_sql_store! {
    impl {
        pub(super) async fn consume_use(&self, id: Uuid) -> Result<Option<i64>, StoreError> {
            // One statement: the check and the increment are atomic however many replicas ask.
            Ok(sqlx::query_scalar(
                "UPDATE tokens SET uses = uses + 1 \
         WHERE id = $1 AND max_uses IS NOT NULL AND uses < max_uses RETURNING uses",
            )
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
        }

        pub(super) async fn record_usage(&self, usage: &[UsageRecord]) -> Result<(), StoreError> {
            let mut tx = self.begin_write().await?;
            for record in usage {
                // Another replica may have written a later use already; keep the later one.
                sqlx::query(
            "UPDATE tokens SET use_count = use_count + $1, \
             last_used_ip = CASE WHEN last_used_time IS NULL OR last_used_time <= $2 THEN $3 ELSE last_used_ip END, \
             last_used_time = CASE WHEN last_used_time IS NULL OR last_used_time <= $2 THEN $2 ELSE last_used_time END \
             WHERE id = $4",
        )
        .bind(record.count)
        .bind(record.last_used_time)
        .bind(record.last_used_ip.as_deref())
        .bind(record.id)
        .execute(&mut *tx)
        .await?;
            }
            commit(tx).await?;
            Ok(())
        }
    }
}
