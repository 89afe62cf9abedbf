//! What the admin CLI prints: any response as protojson (`-o json`), as a short summary, or
//! as an aligned table of one of its repeated fields; the secret of a create or rotate
//! alone on stdout (`-o secret`). Generic over messages: the descriptor set build.rs writes
//! says what each field is, so no message has printing code of its own.

use std::{
    io::{self, Write},
    sync::LazyLock,
};

use clap::ValueEnum;
use prost_reflect::{
    DescriptorPool, DynamicMessage, Kind, MessageDescriptor, ReflectMessage, SerializeOptions,
};
use serde_json::Value;

use super::{client::Failure, text::one_line};
use crate::pb;

/// How to print a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// For people: an aligned table (lists) or a short summary.
    Table,
    /// Protobuf's JSON mapping (lowerCamelCase names, int64 as strings), for scripts.
    Json,
    /// Only for `tokens create` and `tokens rotate`: the secret alone on stdout, the
    /// summary on stderr, for piping into a secret manager.
    Secret,
}

/// How a response looks in table output.
#[derive(Clone, Copy, Debug)]
pub enum View {
    /// One `field: value` line per set field (those of an embedded token or type too).
    Summary,
    /// A table of the repeated field `rows`, with these columns (field names).
    Table {
        rows: &'static str,
        columns: &'static [&'static str],
    },
    /// A line saying what was done (for answers that carry nothing, like a delete).
    Done(&'static str),
}

/// A message with a name in our descriptor set.
pub trait Named: prost::Message + Sized {
    /// The message's full protobuf name.
    const NAME: &'static str;
}

macro_rules! named {
    ($($message:ident),* $(,)?) => {$(
        impl Named for pb::v1::$message {
            const NAME: &'static str = concat!("tokenauthority.v1.", stringify!($message));
        }
    )*};
}

named!(
    Token,
    CreateTokenResponse,
    ListTokensResponse,
    RotateTokenResponse,
    RevokeTokensResponse,
    LookupTokenResponse,
    TokenType,
    ListTokenTypesResponse,
    ListAuditEventsResponse,
    VerifyResponse,
);

impl Named for () {
    const NAME: &'static str = "google.protobuf.Empty";
}

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).expect("build.rs writes a valid descriptor set")
});

/// The field that carries a new secret, in the responses that have one.
const SECRET_FIELD: &str = "secret";

/// Returns the message as a dynamic one, by way of its encoding.
pub fn dynamic<M: Named>(message: &M) -> DynamicMessage {
    let descriptor = descriptor(M::NAME);
    DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .expect("a message decodes as itself")
}

fn descriptor(name: &str) -> MessageDescriptor {
    POOL.get_message_by_name(name)
        .unwrap_or_else(|| panic!("{name} is in the descriptor set"))
}

/// Returns the message in protobuf's JSON mapping, as `-o json` prints it.
pub fn to_json<M: Named>(message: &M) -> Value {
    json(&dynamic(message), &SerializeOptions::new())
}

fn json(message: &DynamicMessage, options: &SerializeOptions) -> Value {
    message
        .serialize_with_options(serde_json::value::Serializer, options)
        .expect("a message serializes to JSON")
}

/// Prints a response as `output` asks. With [`Output::Secret`], the response must carry a
/// secret: it alone goes to stdout, the rest to stderr.
pub fn print<M: Named>(message: &M, output: Output, view: View) -> Result<(), Failure> {
    let mut message = dynamic(message);
    match output {
        Output::Json => {
            let text = serde_json::to_string_pretty(&json(&message, &SerializeOptions::new()))
                .expect("JSON prints");
            out(&super::text::json_escaped(&text));
        }
        Output::Secret => {
            let secret = message
                .take_field_by_name(SECRET_FIELD)
                .and_then(|value| value.as_str().map(str::to_owned))
                .ok_or_else(|| Failure::usage("--output secret: this answer has no secret"))?;
            out(&secret);
            let _ = write!(io::stderr(), "{}", render(&message, view));
        }
        Output::Table => {
            let text = render(&message, view);
            let _ = write!(io::stdout(), "{text}");
            if let Some(next) = message
                .get_field_by_name("next_page_token")
                .and_then(|v| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned))
            {
                let _ = writeln!(io::stderr(), "more: pass --page-token {}", one_line(&next));
            }
        }
    }
    Ok(())
}

/// Writes a line to stdout; a closed stdout (`| head`) is not an error.
fn out(line: &str) {
    let _ = writeln!(io::stdout(), "{line}");
}

/// Renders a message for people.
pub fn render(message: &DynamicMessage, view: View) -> String {
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(false);
    let value = json(message, &options);
    match view {
        View::Summary => summary(message.descriptor(), &value),
        View::Table { rows, columns } => {
            let rows = value[rows].as_array().cloned().unwrap_or_default();
            table(
                columns,
                rows.iter()
                    .map(|row| columns.iter().map(|c| cell(&row[*c]))),
            )
        }
        View::Done(what) => format!("{what}\n"),
    }
}

/// `field: value` lines, aligned; an embedded message of ours (the token of a create,
/// the template of a type) is shown field by field in its place. Empty fields are left out.
fn summary(descriptor: MessageDescriptor, value: &Value) -> String {
    let mut lines = Vec::new();
    for field in descriptor.fields() {
        let name = field.name();
        match field.kind() {
            Kind::Message(inner)
                if !field.is_map()
                    && !field.is_list()
                    && inner.package_name() == descriptor.package_name() =>
            {
                if let Value::Object(object) = &value[name] {
                    for inner_field in inner.fields() {
                        let inner_value = object.get(inner_field.name()).unwrap_or(&Value::Null);
                        push(&mut lines, inner_field.name(), inner_value);
                    }
                }
            }
            _ => push(&mut lines, name, &value[name]),
        }
    }
    let width = 1 + lines.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    lines
        .iter()
        .map(|(name, value)| format!("{:width$} {value}\n", format!("{name}:")))
        .collect()
}

fn push(lines: &mut Vec<(String, String)>, name: &str, value: &Value) {
    let shown = cell(value);
    if !shown.is_empty() {
        lines.push((name.to_owned(), shown));
    }
}

/// One value on one line: lists joined by `, `, maps and small messages as `k=v`.
fn cell(value: &Value) -> String {
    let text = match value {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(", "),
        Value::Object(object) if object.values().all(|v| !v.is_object() && !v.is_array()) => object
            .iter()
            .map(|(k, v)| format!("{k}={}", cell(v)))
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    };
    // No control or format character reaches the terminal (a value may hold anything).
    one_line(&text)
}

/// An aligned table with a header of upper-cased column names; empty cells are `-`.
pub fn table(
    columns: &[&str],
    rows: impl IntoIterator<Item = impl IntoIterator<Item = String>>,
) -> String {
    let header: Vec<String> = columns.iter().map(|c| c.to_uppercase()).collect();
    let mut grid = vec![header];
    for row in rows {
        grid.push(
            row.into_iter()
                .map(|c| if c.is_empty() { "-".to_owned() } else { c })
                .collect(),
        );
    }
    let mut widths = vec![0; columns.len()];
    for row in &grid {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for row in &grid {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        text.push_str(line.join("  ").trim_end());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::v1::{CreateTokenResponse, ListTokensResponse, RateLimit, Token};

    fn token() -> Token {
        Token {
            id: "01a2".into(),
            name: "billing-ci".into(),
            owner: "team-billing".into(),
            permissions: vec!["domains:read".into(), "backends:write".into()],
            bindings: [("reportId".to_owned(), "r-17".to_owned())].into(),
            max_uses: 100,
            rate_limit: Some(RateLimit {
                requests: 10,
                interval: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 0,
                }),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn json_is_protojson() {
        let json = to_json(&token());
        assert_eq!(json["maxUses"], "100", "int64 as a string");
        assert_eq!(json["rateLimit"]["interval"], "60s");
        assert_eq!(json["bindings"]["reportId"], "r-17");
        assert!(json.get("enabled").is_none(), "defaults left out");
    }

    #[test]
    fn a_summary_shows_the_fields_in_words_and_the_embedded_token_in_place() {
        let created = CreateTokenResponse {
            token: Some(token()),
            secret: "ta_secret".into(),
        };
        let text = render(&dynamic(&created), View::Summary);
        assert!(text.contains("name:        billing-ci\n"), "{text}");
        assert!(
            text.contains("permissions: domains:read, backends:write\n"),
            "{text}"
        );
        assert!(text.contains("bindings:    reportId=r-17\n"), "{text}");
        assert!(
            text.contains("rate_limit:  interval=60s, requests=10\n"),
            "{text}"
        );
        assert!(
            text.contains("enabled:     false\n"),
            "a false bool is shown"
        );
        assert!(!text.contains("description"), "empty fields are left out");
        assert!(text.ends_with("secret:      ta_secret\n"), "{text}");
    }

    #[test]
    fn a_table_aligns_its_columns() {
        let list = ListTokensResponse {
            tokens: vec![
                token(),
                Token {
                    id: "01a3".into(),
                    name: "x".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let view = View::Table {
            rows: "tokens",
            columns: &["id", "name", "owner", "enabled"],
        };
        assert_eq!(
            render(&dynamic(&list), view),
            "ID    NAME        OWNER         ENABLED\n\
             01a2  billing-ci  team-billing  false\n\
             01a3  x           -             false\n"
        );
    }

    #[test]
    fn control_and_format_characters_do_not_reach_the_terminal() {
        assert_eq!(
            cell(&Value::String("a\u{1b}[2Jb\u{202e}c\n".into())),
            "a\u{FFFD}[2Jb\u{FFFD}c"
        );
        let map = serde_json::json!({"k\u{1b}": "v\u{2066}"});
        assert_eq!(cell(&map), "k\u{FFFD}=v\u{FFFD}");
    }
}
