//! "Authorize this HTTP request": what an Envoy ext_authz `Check` or a gateway's forward-auth
//! request asks, worked out from the HTTP request it describes: the credential, the
//! permissions the route needs, the bindings it touches, and where the request came from.
//! Protocol-neutral and pure: the front ends (`grpc::ext_authz`) feed it and answer.

pub mod decision;
pub mod request;
pub mod requirement;
pub mod rules;
pub mod settings;

pub use decision::{Decision, Denial, HttpRequest, authorize};
pub use request::{Credential, Headers, client_ip, credential};
pub use requirement::{
    BINDING_PREFIX, BINDINGS_KEY, BadRoute, PERMISSION_KEY, Requirement, Route, Unmapped,
    requirement,
};
pub use rules::Rules;
pub use settings::{CheckSettings, IdentityHeaders, header_name, path_prefix};
