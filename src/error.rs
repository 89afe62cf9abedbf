//! The service's errors and the one place they become gRPC statuses.

use tonic::{Code, Status};

use crate::{domain::policy::Refusal, store::StoreError};

/// Everything a call can fail with. Messages are for the client and never carry a secret;
/// internal causes are logged, not sent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field of the request is not acceptable.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The field, e.g. `token.permissions[2]`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// No credentials, or credentials that are not a valid token.
    #[error("{0}")]
    Unauthenticated(String),
    /// Valid credentials that may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The thing named does not exist (or is not the caller's to see).
    #[error("{0}")]
    NotFound(String),
    /// The thing to create exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// A concurrent change won; the client may retry.
    #[error("{0}")]
    Aborted(String),
    /// The thing is not in a state that allows this (e.g. a type still in use).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Too many requests; the client may retry later.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The store failed.
    #[error("token store unavailable")]
    Store(#[from] StoreError),
}

impl Error {
    /// Builds an `InvalidArgument` naming the field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl From<Refusal> for Error {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::NotFound(message) => Error::NotFound(message),
            Refusal::Forbidden(message) => Error::PermissionDenied(message),
            Refusal::Invalid { field, message } => Error::InvalidArgument { field, message },
            Refusal::FailedPrecondition(message) => Error::FailedPrecondition(message),
            Refusal::RateLimited(message) => Error::ResourceExhausted(message),
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let code = match &error {
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::Aborted(_) => Code::Aborted,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Store(StoreError::NameTaken | StoreError::TypeTaken) => Code::AlreadyExists,
            Error::Store(StoreError::Contended(_)) => Code::Aborted,
            Error::Store(StoreError::OverBudget) => Code::ResourceExhausted,
            Error::Store(cause) => {
                tracing::error!(error = %cause, "store operation failed");
                Code::Unavailable
            }
        };
        let message = match &error {
            Error::Store(StoreError::NameTaken) => {
                "token.name: a token with this name already exists for this owner".to_owned()
            }
            Error::Store(StoreError::TypeTaken) => {
                "token_type.id: a token type with this id already exists".to_owned()
            }
            Error::Store(StoreError::CommitUnknown(_)) => {
                "token store unavailable while committing: the change may or may not have been \
                 made; read it back before retrying"
                    .to_owned()
            }
            Error::Store(over @ StoreError::OverBudget) => over.to_string(),
            other => other.to_string(),
        };
        Status::new(code, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_names_the_field() {
        let status = Status::from(Error::invalid("token.name", "is required"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "token.name: is required");
    }

    #[test]
    fn store_outages_are_unavailable_without_internals() {
        let status = Status::from(Error::Store(StoreError::Unavailable(
            sqlx::Error::PoolTimedOut,
        )));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "token store unavailable");
    }

    #[test]
    fn a_commit_cut_off_says_its_outcome_is_unknown() {
        let status = Status::from(Error::Store(StoreError::CommitUnknown(sqlx::Error::Io(
            std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
        ))));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(
            status.message().contains("may or may not"),
            "{}",
            status.message()
        );
        assert!(!status.message().contains("EOF"), "no internals");
    }

    #[test]
    fn name_conflicts_are_already_exists() {
        let status = Status::from(Error::Store(StoreError::NameTaken));
        assert_eq!(status.code(), Code::AlreadyExists);
        assert!(status.message().starts_with("token.name"));
    }
}
