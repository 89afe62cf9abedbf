//! The first admin token: made on the first start of an empty store, or on demand by an
//! operator with database access.

use std::{io::Write, path::Path};

use crate::{
    domain::{
        audit::AuditEvent,
        permission::Permission,
        secret::{TokenPrefix, TokenSecret},
        token::{Token, parse_owner},
    },
    store::{StoreError, TokenStore},
};

/// Which kind of admin token to make.
pub enum Mode {
    /// Only if no bootstrap token was ever made on this store (the first start).
    FirstStart,
    /// Always (the `bootstrap` subcommand).
    OnDemand,
}

/// Makes an admin token (`*:*`) for `owner`; returns it with its secret, or `None` when
/// `FirstStart` finds the store bootstrapped already.
pub async fn create_admin_token(
    store: &dyn TokenStore,
    prefix: &TokenPrefix,
    owner: &str,
    mode: Mode,
) -> anyhow::Result<Option<(Token, TokenSecret)>> {
    let owner = parse_owner(owner).map_err(|m| anyhow::anyhow!("bootstrap owner {m}"))?;
    let secret = TokenSecret::generate(prefix);
    let now = crate::domain::token::now();
    let name = match mode {
        Mode::FirstStart => "bootstrap-admin".to_owned(),
        Mode::OnDemand => format!("admin-{}", now.format("%Y%m%dT%H%M%S%.3fZ")),
    };
    let token = Token {
        name,
        token_type: "personal".to_owned(),
        description: "admin token made by bootstrap".to_owned(),
        permissions: vec![Permission::all()],
        ..Token::new(owner, &secret, None, now)
    };
    let only_first = matches!(mode, Mode::FirstStart);
    let audit = AuditEvent::new("bootstrap", AuditEvent::token_target(token.id), None, now)
        .change("owner", token.owner.clone())
        .change("permissions", vec!["*:*"]);
    let stored = store
        .insert_admin(&token, only_first, &audit)
        .await
        .map_err(|e| match e {
            StoreError::NameTaken => {
                anyhow::anyhow!("an admin token named {} exists already", token.name)
            }
            other => other.into(),
        })?;
    if stored {
        tracing::info!(action = "bootstrap", token_id = %token.id, owner = %token.owner, "admin token created");
    }
    Ok(stored.then_some((token, secret)))
}

/// Writes a secret to a file only its owner can read (mode 0600), replacing the file.
pub fn write_secret_file(path: &Path, secret: &TokenSecret) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        let mut file = options.open(path)?;
        // The mode above applies only to new files; tighten an existing one too.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        writeln!(file, "{}", secret.expose())?;
        file.sync_all()
    }
    #[cfg(not(unix))]
    {
        let mut file = options.open(path)?;
        writeln!(file, "{}", secret.expose())?;
        file.sync_all()
    }
}
