//! Query strings and path variables of the JSON API: `updateMask=a,b`, `pageSize=20`,
//! repeated parameters (`permissions=a&permissions=b`), dotted names (`rateLimit.requests`)
//! and map entries (`bindings[reportId]=r-17`), each turned into the protojson value of the
//! field it names, by the field's type, and set into the request's JSON.

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value};

use super::rules::field_path;

/// The longest parameter name echoed in an error; longer ones are not quoted (a secret
/// pasted as a name must not come back in an answer or a log).
const ECHO_LIMIT: usize = 40;

/// A query string's parameters, decoded (`+` a space, `%xx` escapes), in order.
pub fn parse(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// A parameter's name as an error may quote it: itself when short and made of name
/// characters, else a placeholder.
pub fn echo(name: &str) -> String {
    let bare = name.replace(['[', ']'], "");
    if plain(&bare) {
        name.to_owned()
    } else {
        "(a parameter)".to_owned()
    }
}

/// Whether a name from a request may be quoted in an answer: short, and only name
/// characters (a secret is longer than [`ECHO_LIMIT`]).
pub fn plain(name: &str) -> bool {
    name.len() <= ECHO_LIMIT
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// How a value goes into its field.
pub enum Put {
    /// Sets a singular field; refused if the JSON already has it, unless `overwrite`.
    Set { overwrite: bool },
    /// Appends to a repeated field.
    Push,
    /// Sets one entry of a map field.
    Entry(String),
}

/// A parameter name resolved against the request message: the fields from the top down,
/// and how the value goes in.
pub fn resolve(
    message: &MessageDescriptor,
    name: &str,
) -> Result<(Vec<FieldDescriptor>, Put), String> {
    let (path, key) = match name.strip_suffix(']').and_then(|n| n.split_once('[')) {
        Some((path, key)) => (path, Some(key.to_owned())),
        None => (name, None),
    };
    let fields = field_path(message, path).map_err(|_| "no such field".to_owned())?;
    let Some(leaf) = fields.last() else {
        return Err("no such field".into());
    };
    let put = match (key, leaf.is_map(), leaf.is_list()) {
        (Some(key), true, _) => Put::Entry(key),
        (None, true, _) => return Err("a map: give each entry as name[key]=value".into()),
        (Some(_), false, _) => return Err("not a map".into()),
        (None, false, true) => Put::Push,
        (None, false, false) => Put::Set { overwrite: false },
    };
    Ok((fields, put))
}

/// The protojson value of `text` for `field` (its map value's type, for a map).
pub fn value_of(field: &FieldDescriptor, text: &str) -> Result<Value, String> {
    let kind = match field.kind() {
        Kind::Message(entry) if field.is_map() => entry.map_entry_value_field().kind(),
        kind => kind,
    };
    match kind {
        Kind::Bool => match text {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err("expected true or false".into()),
        },
        Kind::Message(message) => match message.full_name() {
            "google.protobuf.Timestamp"
            | "google.protobuf.Duration"
            | "google.protobuf.FieldMask"
            | "google.protobuf.StringValue"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.Int32Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.DoubleValue"
            | "google.protobuf.FloatValue"
            | "google.protobuf.BytesValue" => Ok(Value::String(text.to_owned())),
            _ => Err("a message: name one of its fields".into()),
        },
        // protojson takes every number and enum as a string too.
        _ => Ok(Value::String(text.to_owned())),
    }
}

/// Puts `value` at the field path in the request's JSON object, creating the objects on
/// the way; a key is found under its JSON name or its proto name.
pub fn put(
    root: &mut Map<String, Value>,
    fields: &[FieldDescriptor],
    put: Put,
    value: Value,
) -> Result<(), String> {
    let Some((leaf, parents)) = fields.split_last() else {
        return Err("no such field".into());
    };
    let mut object = root;
    for field in parents {
        let key = key_in(object, field);
        let entry = object
            .entry(key)
            .or_insert_with(|| Value::Object(Map::new()));
        object = match entry {
            Value::Object(inner) => inner,
            _ => return Err(format!("{} is given twice", field.name())),
        };
    }
    let key = key_in(object, leaf);
    match put {
        Put::Set { overwrite } => {
            if !overwrite && object.contains_key(&key) {
                return Err("given more than once".into());
            }
            // The other spelling of the same field must not survive beside it.
            object.remove(leaf.name());
            object.remove(leaf.json_name());
            object.insert(key, value);
        }
        Put::Push => match object
            .entry(key)
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            Value::Array(items) => items.push(value),
            _ => return Err("given more than once".into()),
        },
        Put::Entry(entry) => match object
            .entry(key)
            .or_insert_with(|| Value::Object(Map::new()))
        {
            Value::Object(entries) => {
                if entries.insert(entry, value).is_some() {
                    return Err("an entry given more than once".into());
                }
            }
            _ => return Err("given more than once".into()),
        },
    }
    Ok(())
}

/// The key a field has in `object`: the spelling already there, else its JSON name.
fn key_in(object: &Map<String, Value>, field: &FieldDescriptor) -> String {
    if object.contains_key(field.name()) {
        field.name().to_owned()
    } else {
        field.json_name().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list_request() -> MessageDescriptor {
        let pool = prost_reflect::DescriptorPool::decode(crate::pb::FILE_DESCRIPTOR_SET).unwrap();
        pool.get_message_by_name("tokenauthority.v1.ListTokensRequest")
            .unwrap()
    }

    #[test]
    fn names_resolve_by_proto_or_json_name_with_map_entries() {
        let message = list_request();
        let mut root = Map::new();
        for (name, text) in
            parse("pageSize=5&name_prefix=a+b&bindings%5BreportId%5D=r-17&enabled=true")
        {
            let (fields, how) = resolve(&message, &name).unwrap();
            let value = value_of(fields.last().unwrap(), &text).unwrap();
            put(&mut root, &fields, how, value).unwrap();
        }
        assert_eq!(
            Value::Object(root),
            serde_json::json!({"pageSize": "5", "namePrefix": "a b",
                "bindings": {"reportId": "r-17"}, "enabled": true})
        );
    }

    #[test]
    fn bad_names_and_values_are_refused() {
        let message = list_request();
        assert!(resolve(&message, "nope").is_err());
        assert!(resolve(&message, "bindings").is_err());
        assert!(resolve(&message, "owner[x]").is_err());
        assert!(resolve(&message, "owner.x").is_err());
        let (fields, _) = resolve(&message, "enabled").unwrap();
        assert!(value_of(fields.last().unwrap(), "yes").is_err());
        let mut root = Map::new();
        let (fields, _) = resolve(&message, "owner").unwrap();
        put(
            &mut root,
            &fields,
            Put::Set { overwrite: false },
            "a".into(),
        )
        .unwrap();
        assert!(
            put(
                &mut root,
                &fields,
                Put::Set { overwrite: false },
                "b".into()
            )
            .is_err()
        );
        assert_eq!(echo(&"x".repeat(41)), "(a parameter)");
        assert_eq!(echo("pageSize"), "pageSize");
    }
}
