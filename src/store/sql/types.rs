//! The token-type registry: the built-in types, and the types administrators add.

use sqlx::Executor;

use super::{
    commit, map_write_error,
    rows::{TYPE_COLUMNS, TypeRow, json},
};
use crate::{
    domain::{audit::AuditEvent, token_type::TokenType},
    store::{Actor, StoreError, TypeDeletion, TypeWrite},
};

impl_sql_store! {
    impl {
        pub(super) async fn seed_types(&self, types: &[TokenType]) -> Result<(), StoreError> {
            for token_type in types {
                Self::insert_type_row(&self.pool, token_type, " ON CONFLICT (id) DO NOTHING")
                    .await?;
            }
            Ok(())
        }

        pub(super) async fn list_types(&self) -> Result<Vec<TokenType>, StoreError> {
            let rows: Vec<TypeRow> = sqlx::query_as(&format!(
                "SELECT {TYPE_COLUMNS} FROM token_types ORDER BY id"
            ))
            .fetch_all(&self.pool)
            .await?;
            Ok(rows.into_iter().map(TokenType::from).collect())
        }

        pub(super) async fn get_type(&self, id: &str) -> Result<Option<TokenType>, StoreError> {
            let row: Option<TypeRow> = sqlx::query_as(&format!(
                "SELECT {TYPE_COLUMNS} FROM token_types WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
            Ok(row.map(TokenType::from))
        }

        pub(super) async fn insert_type(
            &self,
            token_type: &TokenType,
            actor: Actor,
            audit: &AuditEvent,
        ) -> Result<TypeWrite<()>, StoreError> {
            let mut tx = self.begin_write().await?;
            if let Some(refused) = Self::gate(&mut tx, actor, 1).await? {
                return Ok(refused.into());
            }
            Self::insert_type_row(&mut *tx, token_type, "").await?;
            Self::insert_audit(&mut *tx, audit, "").await?;
            commit(tx).await?;
            Ok(TypeWrite::Done(()))
        }

        pub(super) async fn update_type(
            &self,
            token_type: &TokenType,
            actor: Actor,
            audit: &AuditEvent,
        ) -> Result<TypeWrite<Option<TokenType>>, StoreError> {
            let mut tx = self.begin_write().await?;
            if let Some(refused) = Self::gate(&mut tx, actor, 1).await? {
                return Ok(refused.into());
            }
            let row: Option<TypeRow> = sqlx::query_as(&format!(
                "UPDATE token_types SET display_name = $1, description = $2, template = $3, \
         update_time = $4, revision = revision + 1 WHERE id = $5 AND revision = $6 \
         RETURNING {TYPE_COLUMNS}"
            ))
            .bind(token_type.display_name.as_str())
            .bind(token_type.description.as_str())
            .bind(json(&token_type.template))
            .bind(token_type.update_time)
            .bind(token_type.id.as_str())
            .bind(token_type.revision)
            .fetch_optional(&mut *tx)
            .await?;
            if row.is_some() {
                Self::insert_audit(&mut *tx, audit, "").await?;
                commit(tx).await?;
            }
            Ok(TypeWrite::Done(row.map(TokenType::from)))
        }

        pub(super) async fn delete_type(
            &self,
            id: &str,
            actor: Actor,
            audit: &AuditEvent,
        ) -> Result<TypeWrite<TypeDeletion>, StoreError> {
            let mut tx = self.begin_write().await?;
            if let Some(refused) = Self::gate(&mut tx, actor, 1).await? {
                return Ok(refused.into());
            }
            // Locked for update first: creations of tokens of the type share-lock its row
            // until they commit, so the check below (a new statement, seeing what they
            // committed) cannot miss a token made meanwhile.
            let builtin: Option<bool> = sqlx::query_scalar(&format!(
                "SELECT builtin FROM token_types WHERE id = $1{}",
                DB::LOCK_ROWS
            ))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            match builtin {
                None => return Ok(TypeWrite::Done(TypeDeletion::NotFound)),
                Some(true) => return Ok(TypeWrite::Done(TypeDeletion::Builtin)),
                Some(false) => {}
            }
            // Deleting only when no token has the type, in one statement, so that a token
            // created meanwhile cannot be left with a type that no longer exists.
            let deleted: Option<String> = sqlx::query_scalar(
                "DELETE FROM token_types WHERE id = $1 \
         AND NOT EXISTS (SELECT 1 FROM tokens WHERE token_type = $1) RETURNING id",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            if deleted.is_none() {
                let in_use: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM tokens WHERE token_type = $1")
                        .bind(id)
                        .fetch_one(&mut *tx)
                        .await?;
                return Ok(TypeWrite::Done(TypeDeletion::InUse(in_use)));
            }
            Self::insert_audit(&mut *tx, audit, "").await?;
            commit(tx).await?;
            Ok(TypeWrite::Done(TypeDeletion::Deleted))
        }

        /// Inserts a token type; `suffix` may add an ON CONFLICT clause.
        async fn insert_type_row<'e, E>(
            executor: E,
            token_type: &TokenType,
            suffix: &str,
        ) -> Result<(), StoreError>
        where
            E: Executor<'e, Database = DB>,
        {
            sqlx::query(&format!(
        "INSERT INTO token_types ({TYPE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8){suffix}"
    ))
    .bind(token_type.id.as_str())
    .bind(token_type.display_name.as_str())
    .bind(token_type.description.as_str())
    .bind(json(&token_type.template))
    .bind(token_type.builtin)
    .bind(token_type.create_time)
    .bind(token_type.update_time)
    .bind(token_type.revision)
    .execute(executor)
    .await
    .map_err(map_write_error)?;
            Ok(())
        }
    }
}
