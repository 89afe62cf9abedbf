//! The `google.api.http` rules of every RPC, read from the descriptor set's method
//! options (the extension field 72295728 of `MethodOptions`) once, at start.

use http::Method;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, MessageDescriptor, MethodDescriptor, Value,
};

use super::path::Template;

/// The extension that carries a method's HTTP rule.
pub const HTTP_EXTENSION: &str = "google.api.http";

/// Where a request's JSON body goes.
#[derive(Clone, Debug)]
pub enum BodyRule {
    /// Nowhere: the route takes no body; fields come from the path and the query.
    None,
    /// `body: "*"`: the body is the whole request message, less the path's fields.
    All,
    /// `body: "field"`: the body is this field; the query may set the others.
    Field(FieldDescriptor),
}

/// One HTTP binding of an RPC.
#[derive(Clone, Debug)]
pub struct Rule {
    /// The HTTP method.
    pub method: Method,
    /// The path template.
    pub template: Template,
    /// Where the body goes.
    pub body: BodyRule,
    /// The answer's field to send instead of the whole response message, if any.
    pub response_body: Option<FieldDescriptor>,
    /// The RPC.
    pub rpc: MethodDescriptor,
}

/// Who may call an RPC, and so which per-address limit counts its requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a credential, without a limit: Verify judges the token it carries.
    Open,
    /// Anyone, without a credential, within `--leak-report-rate-limit`.
    LeakReport,
    /// A token holding the permission, within `--management-rate-limit`.
    Management,
}

impl Rule {
    /// Who may call the RPC.
    pub fn access(&self) -> Access {
        match self.rpc.parent_service().full_name() {
            "tokenauthority.v1.VerifyService" => Access::Open,
            "tokenauthority.v1.LeakService" => Access::LeakReport,
            _ => Access::Management,
        }
    }

    /// The gRPC path of the RPC, `/package.Service/Method`.
    pub fn grpc_path(&self) -> String {
        format!(
            "/{}/{}",
            self.rpc.parent_service().full_name(),
            self.rpc.name()
        )
    }
}

/// Reads every rule of every method in the pool, additional bindings included. A rule
/// that cannot be served (a bad template, a body or path naming no field) is an error.
pub fn read(pool: &DescriptorPool) -> Result<Vec<Rule>, String> {
    let Some(extension) = pool.get_extension_by_name(HTTP_EXTENSION) else {
        return Ok(Vec::new());
    };
    let mut rules = Vec::new();
    for service in pool.services() {
        for rpc in service.methods() {
            let options = rpc.options();
            if !options.has_extension(&extension) {
                continue;
            }
            if let Value::Message(rule) = options.get_extension(&extension).as_ref() {
                read_rule(&rpc, rule, true, &mut rules)
                    .map_err(|e| format!("{}: {e}", rpc.full_name()))?;
            }
        }
    }
    Ok(rules)
}

fn read_rule(
    rpc: &MethodDescriptor,
    rule: &DynamicMessage,
    top: bool,
    rules: &mut Vec<Rule>,
) -> Result<(), String> {
    let text = |name: &str| {
        rule.get_field_by_name(name)
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let mut pattern = None;
    for (name, method) in [
        ("get", Method::GET),
        ("put", Method::PUT),
        ("post", Method::POST),
        ("delete", Method::DELETE),
        ("patch", Method::PATCH),
    ] {
        if rule.has_field_by_name(name) {
            pattern = Some((method, text(name)));
        }
    }
    if rule.has_field_by_name("custom")
        && let Some(Value::Message(custom)) = rule.get_field_by_name("custom").as_deref()
    {
        let field = |n: &str| {
            custom
                .get_field_by_name(n)
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        };
        let method = Method::from_bytes(field("kind").as_bytes()).map_err(|e| e.to_string())?;
        pattern = Some((method, field("path")));
    }
    let Some((method, path)) = pattern else {
        return Err("an HTTP rule without a pattern".into());
    };
    let template = Template::parse(&path)?;
    let input = rpc.input();
    for variable in template.variables() {
        field_path(&input, variable)?;
    }
    let body = match text("body").as_str() {
        "" => BodyRule::None,
        "*" => BodyRule::All,
        name => BodyRule::Field(
            input
                .get_field_by_name(name)
                .ok_or_else(|| format!("body {name}: no such field"))?,
        ),
    };
    let response_body = match text("response_body").as_str() {
        "" => None,
        name => match rpc.output().get_field_by_name(name) {
            Some(field) if matches!(field.kind(), prost_reflect::Kind::Message(_)) => Some(field),
            _ => return Err(format!("response_body {name}: no such message field")),
        },
    };
    rules.push(Rule {
        method,
        template,
        body,
        response_body,
        rpc: rpc.clone(),
    });
    if top && let Some(Value::List(more)) = rule.get_field_by_name("additional_bindings").as_deref()
    {
        for binding in more {
            if let Value::Message(binding) = binding {
                read_rule(rpc, binding, false, rules)?;
            }
        }
    }
    Ok(())
}

/// The fields a dotted path (`token.id`) names, from `message` down; each step but the
/// last a singular message field. Proto names and JSON names are both accepted.
pub fn field_path(message: &MessageDescriptor, path: &str) -> Result<Vec<FieldDescriptor>, String> {
    let mut fields = Vec::new();
    let mut current = message.clone();
    let mut steps = path.split('.').peekable();
    while let Some(step) = steps.next() {
        let field = current
            .get_field_by_name(step)
            .or_else(|| current.get_field_by_json_name(step))
            .ok_or_else(|| format!("{path}: no such field"))?;
        if steps.peek().is_some() {
            match field.kind() {
                prost_reflect::Kind::Message(inner) if !field.is_list() && !field.is_map() => {
                    current = inner;
                }
                _ => return Err(format!("{path}: {step} has no fields")),
            }
        }
        fields.push(field);
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every RPC of our services has a rule, and every rule can be served: a new RPC
    /// without an `option (google.api.http)` fails here, not in production.
    #[test]
    fn every_rpc_of_ours_has_a_rule() {
        let pool = DescriptorPool::decode(crate::pb::FILE_DESCRIPTOR_SET).unwrap();
        let rules = read(&pool).unwrap();
        for service in pool.services() {
            if !service.full_name().starts_with("tokenauthority.") {
                continue;
            }
            for rpc in service.methods() {
                assert!(
                    rules.iter().any(|r| r.rpc == rpc),
                    "{} has no google.api.http rule",
                    rpc.full_name()
                );
            }
        }
        let update = rules
            .iter()
            .find(|r| r.rpc.name() == "UpdateToken")
            .unwrap();
        assert_eq!(update.method, Method::PATCH);
        assert_eq!(update.template.as_str(), "/v1/tokens/{token.id}");
        assert!(matches!(&update.body, BodyRule::Field(f) if f.name() == "token"));
        assert_eq!(
            update.grpc_path(),
            "/tokenauthority.v1.TokenService/UpdateToken"
        );
    }
}
