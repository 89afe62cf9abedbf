//! Log lines, as text or JSON, with the current call (its request id and RPC or route,
//! from [`super::call`]) where a span would be.
//!
//! Text: `2026-12-02T05:03:13.899563Z  INFO rpc{request_id=… rpc=…}: message key=value`.
//! JSON, one object per line: `{"timestamp", "level", the event's fields, "span":
//! {"request_id", "rpc"}}`; the shape of tracing-subscriber's JSON with flattened events and
//! the current span, which lines had when the call was a span.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::{
    fmt::{
        FmtContext, FormatEvent, FormatFields, FormattedFields,
        format::{JsonFields, Writer},
    },
    registry::LookupSpan,
};

use super::call;

/// The event formatter of both formats.
#[derive(Clone, Copy, Debug)]
pub enum Lines {
    /// Human-readable text.
    Text,
    /// One JSON object per line.
    Json,
}

impl<S, N> FormatEvent<S, N> for Lines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ");
        let level = *event.metadata().level();
        match self {
            Lines::Text => {
                write!(writer, "{now} ")?;
                write_level(&mut writer, level)?;
                call::with_current(|call| {
                    call.mark_logged();
                    let (name, key) = call.kind.names();
                    write!(
                        writer,
                        "{name}{{request_id={} {key}={}}}: ",
                        call.id, call.name
                    )
                })
                .transpose()?;
                // Spans of libraries (none at info today), as tracing-subscriber writes them.
                if let Some(scope) = ctx.event_scope() {
                    for span in scope.from_root() {
                        write!(writer, "{}", span.name())?;
                        if let Some(fields) = span.extensions().get::<FormattedFields<N>>()
                            && !fields.is_empty()
                        {
                            write!(writer, "{{{fields}}}")?;
                        }
                        writer.write_str(": ")?;
                    }
                }
                ctx.format_fields(writer.by_ref(), event)?;
            }
            Lines::Json => {
                let mut fields = String::with_capacity(128);
                JsonFields::default().format_fields(Writer::new(&mut fields), event)?;
                write!(writer, "{{\"timestamp\":\"{now}\",\"level\":\"{level}\"")?;
                let inner = fields
                    .trim()
                    .strip_prefix('{')
                    .and_then(|f| f.strip_suffix('}'))
                    .unwrap_or_default();
                if !inner.is_empty() {
                    write!(writer, ",{inner}")?;
                }
                call::with_current(|call| {
                    call.mark_logged();
                    let (_, key) = call.kind.names();
                    writer.write_str(",\"span\":{\"request_id\":")?;
                    write_json_string(&mut writer, &call.id.to_string())?;
                    write!(writer, ",\"{key}\":")?;
                    write_json_string(&mut writer, call.name)?;
                    writer.write_char('}')
                })
                .transpose()?;
                writer.write_char('}')?;
            }
        }
        writeln!(writer)
    }
}

/// The level, right-aligned in five columns, coloured as tracing-subscriber colours it.
fn write_level(writer: &mut Writer<'_>, level: Level) -> fmt::Result {
    if !writer.has_ansi_escapes() {
        return write!(writer, "{level:>5} ");
    }
    let colour = match level {
        Level::TRACE => "35",
        Level::DEBUG => "34",
        Level::INFO => "32",
        Level::WARN => "33",
        Level::ERROR => "31",
    };
    write!(writer, "\x1b[{colour}m{level:>5}\x1b[0m ")
}

/// Writes `text` as a JSON string.
fn write_json_string(writer: &mut Writer<'_>, text: &str) -> fmt::Result {
    match serde_json::to_string(text) {
        Ok(quoted) => writer.write_str(&quoted),
        Err(_) => Err(fmt::Error),
    }
}
