//! `GET /v1/openapi.json`: an OpenAPI 3.0 document of the JSON API, generated at start from
//! the same `google.api.http` rules and message descriptors the transcoder serves, so it
//! cannot drift from what the port answers.

use std::collections::BTreeMap;

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

use super::transcode::rules::{BodyRule, Rule, field_path};

/// The document, one operation per rule, every message it names in `components`.
pub fn document(rules: &[Rule]) -> Value {
    let mut schemas = Schemas::default();
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for rule in rules {
        let operation = operation(rule, &mut schemas);
        paths
            .entry(rule.template.as_str().to_owned())
            .or_default()
            .insert(rule.method.as_str().to_ascii_lowercase(), operation);
    }
    let mut components = schemas.done;
    components.insert(
        "Error".into(),
        json!({"type": "object", "properties": {"error": {"type": "object", "properties": {
            "code": {"type": "integer", "description": "the HTTP status"},
            "status": {"type": "string", "description": "the gRPC status name, e.g. NOT_FOUND"},
            "message": {"type": "string", "description": "what is wrong, naming the field"}
        }}}}),
    );
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "token-authority",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The gRPC API as JSON over HTTP, transcoded by its google.api.http rules."
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}
        },
        "security": [{"bearer": []}]
    })
}

fn operation(rule: &Rule, schemas: &mut Schemas) -> Value {
    let input = rule.rpc.input();
    let mut parameters = Vec::new();
    let mut bound_tops = Vec::new();
    for variable in rule.template.variables() {
        if let Ok(fields) = field_path(&input, variable) {
            bound_tops.push(fields[0].clone());
            let leaf = &fields[fields.len() - 1];
            parameters.push(json!({
                "name": variable, "in": "path", "required": true,
                "schema": schemas.field(leaf),
            }));
        }
    }
    let mut operation = Map::new();
    operation.insert("operationId".into(), rule.rpc.full_name().into());
    operation.insert("tags".into(), json!([rule.rpc.parent_service().name()]));
    if rule.access() != crate::http::transcode::rules::Access::Management {
        // Verify and leak reports take no credential.
        operation.insert("security".into(), json!([]));
    }
    match &rule.body {
        BodyRule::All => {
            operation.insert("requestBody".into(), body(schemas.message(&input)));
        }
        BodyRule::Field(field) => {
            bound_tops.push(field.clone());
            operation.insert("requestBody".into(), body(schemas.field(field)));
        }
        BodyRule::None => {}
    }
    if !matches!(rule.body, BodyRule::All) {
        for field in input.fields() {
            if bound_tops.contains(&field) {
                continue;
            }
            if let Some(parameter) = query_parameter(&field, schemas) {
                parameters.push(parameter);
            }
        }
    }
    if !parameters.is_empty() {
        operation.insert("parameters".into(), parameters.into());
    }
    let answer = match &rule.response_body {
        Some(field) => schemas.field(field),
        None => schemas.message(&rule.rpc.output()),
    };
    operation.insert(
        "responses".into(),
        json!({
            "200": {"description": "OK", "content": {"application/json": {"schema": answer}}},
            "default": {"description": "an error", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Error"}}}}
        }),
    );
    Value::Object(operation)
}

fn body(schema: Value) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": schema}}})
}

/// A top-level field as a query parameter: scalars, enums, their lists, the well-known
/// types written as strings, and maps as `name[key]=value`; other messages are not.
fn query_parameter(field: &FieldDescriptor, schemas: &mut Schemas) -> Option<Value> {
    if field.is_map() {
        return Some(json!({
            "name": field.json_name(), "in": "query", "style": "deepObject", "explode": true,
            "schema": schemas.field(field),
        }));
    }
    if let Kind::Message(message) = field.kind()
        && string_form(&message).is_none()
    {
        return None;
    }
    let mut parameter = json!({
        "name": field.json_name(), "in": "query", "schema": schemas.field(field),
    });
    if field.is_list() {
        parameter["explode"] = true.into();
    }
    Some(parameter)
}

/// The schema of a well-known type that protojson writes as a scalar.
fn string_form(message: &MessageDescriptor) -> Option<Value> {
    Some(match message.full_name() {
        "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
        "google.protobuf.Duration" => json!({"type": "string", "example": "3600s"}),
        "google.protobuf.FieldMask" => {
            json!({"type": "string", "example": "description,permissions"})
        }
        "google.protobuf.StringValue" => json!({"type": "string"}),
        "google.protobuf.BoolValue" => json!({"type": "boolean"}),
        _ => return None,
    })
}

/// The component schemas made so far.
#[derive(Default)]
struct Schemas {
    done: Map<String, Value>,
}

impl Schemas {
    /// A reference to a message's schema (made on first use), or its inline form for a
    /// well-known type.
    fn message(&mut self, message: &MessageDescriptor) -> Value {
        if let Some(inline) = string_form(message) {
            return inline;
        }
        match message.full_name() {
            "google.protobuf.Struct" | "google.protobuf.Empty" => {
                return json!({"type": "object"});
            }
            "google.protobuf.Value" => return json!({}),
            "google.protobuf.ListValue" => return json!({"type": "array", "items": {}}),
            _ => {}
        }
        let name = message.full_name().to_owned();
        if !self.done.contains_key(&name) {
            // Placed first, so that a message that contains itself ends.
            self.done.insert(name.clone(), Value::Null);
            let mut properties = Map::new();
            for field in message.fields() {
                properties.insert(field.json_name().to_owned(), self.field(&field));
            }
            self.done.insert(
                name.clone(),
                json!({"type": "object", "properties": properties}),
            );
        }
        json!({"$ref": format!("#/components/schemas/{name}")})
    }

    fn field(&mut self, field: &FieldDescriptor) -> Value {
        if field.is_map()
            && let Kind::Message(entry) = field.kind()
        {
            let value = self.kind(&entry.map_entry_value_field().kind());
            return json!({"type": "object", "additionalProperties": value});
        }
        let one = self.kind(&field.kind());
        if field.is_list() {
            json!({"type": "array", "items": one})
        } else {
            one
        }
    }

    fn kind(&mut self, kind: &Kind) -> Value {
        match kind {
            Kind::Double | Kind::Float => json!({"type": "number"}),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                json!({"type": "integer", "format": "int32"})
            }
            Kind::Uint32 | Kind::Fixed32 => json!({"type": "integer", "minimum": 0}),
            // protojson writes 64-bit integers as strings (and reads either).
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint64 | Kind::Fixed64 => {
                json!({"type": "string", "format": "int64"})
            }
            Kind::Bool => json!({"type": "boolean"}),
            Kind::String => json!({"type": "string"}),
            Kind::Bytes => json!({"type": "string", "format": "byte"}),
            Kind::Enum(values) => {
                let names: Vec<_> = values.values().map(|v| v.name().to_owned()).collect();
                json!({"type": "string", "enum": names})
            }
            Kind::Message(message) => self.message(message),
        }
    }
}
