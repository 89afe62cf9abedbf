//! The audit trail: events recorded with the changes they describe, or on their own, and
//! listed newest first.

use serde_json::Value;
use sqlx::{Executor, types::Json};

use super::{
    commit,
    query::{Arg, Filter, bind_args},
    rows::{AUDIT_COLUMNS, AuditRow},
};
use crate::{
    domain::audit::AuditEvent,
    store::{AuditQuery, StoreError},
};

impl_sql_store! {
    impl {
        pub(super) async fn record_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
            // In a transaction of its own, so that a lost connection can be retried: an
            // autocommit INSERT cut off might have been applied.
            let mut tx = self.begin_write().await?;
            Self::insert_audit(&mut *tx, event, &event.target_owner).await?;
            commit(tx).await
        }

        pub(super) async fn list_audit(
            &self,
            query: &AuditQuery<'_>,
        ) -> Result<Vec<AuditEvent>, StoreError> {
            let mut filter = Filter::default();
            if let Some(owner) = query.owner {
                filter.and("target_owner = ?", Arg::Str(owner));
            }
            if let Some(before) = query.before {
                filter.and("id < ?", Arg::Uuid(before));
            }
            if let Some(target) = query.target {
                filter.and("target = ?", Arg::Str(target));
            }
            if let Some(actor) = query.actor_id {
                filter.and("actor_id = ?", Arg::Uuid(actor));
            }
            if let Some(action) = query.action {
                filter.and("action = ?", Arg::Str(action));
            }
            if let Some(start) = query.start_time {
                filter.and("time >= ?", Arg::Time(start));
            }
            if let Some(end) = query.end_time {
                filter.and("time < ?", Arg::Time(end));
            }
            let limit = filter.next();
            let sql = format!(
                "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE TRUE{} ORDER BY id DESC LIMIT ${limit}",
                filter.sql
            );
            let statement = bind_args!(sqlx::query_as::<DB, AuditRow>(&sql), &filter.args);
            let rows = statement
                .bind(i64::from(query.limit))
                .fetch_all(&self.pool)
                .await?;
            Ok(rows.into_iter().map(AuditEvent::from).collect())
        }

        /// Inserts an audit event about tokens of `target_owner`, through `executor` (the
        /// transaction of the change it describes, or the pool).
        pub(super) async fn insert_audit<'e, E>(
            executor: E,
            event: &AuditEvent,
            target_owner: &str,
        ) -> Result<(), StoreError>
        where
            E: Executor<'e, Database = DB>,
        {
            sqlx::query(&format!(
        "INSERT INTO audit_events ({AUDIT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
    ))
    .bind(event.id)
    .bind(event.time)
    .bind(event.actor_id)
    .bind(event.actor_owner.clone())
    .bind(event.action.clone())
    .bind(event.target.clone())
    .bind(target_owner.to_owned())
    .bind(Json(Value::Object(event.changes.clone())))
    .bind(event.client_ip.clone())
    .bind(event.detail.clone())
    .execute(executor)
    .await?;
            Ok(())
        }
    }
}
