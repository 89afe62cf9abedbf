//! Queries built at run time from optional filters: the WHERE clause, its parameters in
//! order, and binding them.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Backend;
use crate::store::{ListQuery, Scope};

/// Appends `AND owner = $<owner_param>` when the scope is one owner's.
pub(super) fn scoped(sql: &str, scope: Scope<'_>, owner_param: usize) -> String {
    match scope {
        Scope::All => sql.to_owned(),
        Scope::Owner(_) => format!("{sql} AND owner = ${owner_param}"),
    }
}

/// A bind parameter of a query built at run time.
pub(super) enum Arg<'a> {
    Str(&'a str),
    Uuid(Uuid),
    Bool(bool),
    Time(DateTime<Utc>),
}

/// A WHERE clause built from optional filters, with its parameters in order.
#[derive(Default)]
pub(super) struct Filter<'a> {
    pub(super) sql: String,
    pub(super) args: Vec<Arg<'a>>,
}

impl<'a> Filter<'a> {
    /// Adds `AND <condition>`, where `?` in the condition is the next parameter.
    pub(super) fn and(&mut self, condition: &str, arg: Arg<'a>) {
        self.args.push(arg);
        let n = self.args.len();
        self.sql.push_str(" AND ");
        self.sql.push_str(&condition.replace('?', &format!("${n}")));
    }

    /// Adds a condition that takes no parameter.
    pub(super) fn and_plain(&mut self, condition: &str) {
        self.sql.push_str(" AND ");
        self.sql.push_str(condition);
    }

    /// The number the next parameter will get.
    pub(super) fn next(&self) -> usize {
        self.args.len() + 1
    }
}

/// The filters of a token listing (all but its page position).
pub(super) fn token_filter<'a, DB: Backend>(query: &'a ListQuery<'a>) -> Filter<'a> {
    let mut filter = Filter::default();
    if let Some(owner) = query.scope.owner() {
        filter.and("owner = ?", Arg::Str(owner));
    }
    if let Some(kind) = query.token_type {
        filter.and("token_type = ?", Arg::Str(kind));
    }
    if let Some(enabled) = query.enabled {
        filter.and("enabled = ?", Arg::Bool(enabled));
    }
    if let Some(creator) = query.created_by {
        filter.and("created_by = ?", Arg::Uuid(creator));
    }
    if let Some(prefix) = query.name_prefix {
        // Compared, not matched: literal (no LIKE wildcards to escape) and case-sensitive on
        // both backends, where SQLite's LIKE ignores ASCII case and Postgres's does not.
        // Both count characters, not bytes, in substr and length.
        filter.and("substr(name, 1, length(?)) = ?", Arg::Str(prefix));
    }
    match query.expired {
        Some(true) => filter.and(
            "expire_time IS NOT NULL AND expire_time <= ?",
            Arg::Time(query.now),
        ),
        Some(false) => filter.and(
            "(expire_time IS NULL OR expire_time > ?)",
            Arg::Time(query.now),
        ),
        None => {}
    }
    for (key, value) in &query.bindings {
        let (k, v) = (filter.next(), filter.next() + 1);
        filter.and_plain(&DB::binding_clause(k, v));
        filter.args.push(Arg::Str(key));
        filter.args.push(Arg::Str(value));
    }
    filter
}

/// Binds a [`Filter`]'s parameters to a statement, in order.
macro_rules! bind_args {
    ($statement:expr, $args:expr) => {{
        use $crate::store::sql::query::Arg;
        let mut statement = $statement;
        for arg in $args {
            statement = match arg {
                Arg::Str(v) => statement.bind(*v),
                Arg::Uuid(v) => statement.bind(*v),
                Arg::Bool(v) => statement.bind(*v),
                Arg::Time(v) => statement.bind(*v),
            };
        }
        statement
    }};
}
pub(super) use bind_args;
