//! Logging through tracing, as text or JSON, levels from RUST_LOG. Each line of a call
//! carries its request id and RPC or route ([`call`]), written by [`format::Lines`].

pub mod call;
pub mod format;

use std::io::IsTerminal;

use tracing_subscriber::{
    EnvFilter,
    fmt::{self, format::JsonFields},
    layer::SubscriberExt,
    util::SubscriberInitExt,
};

use crate::config::LogFormat;

/// Installs the global subscriber. Logs go to stderr, so that commands which print a
/// result (`bootstrap`) keep stdout for it.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let layer = fmt::layer()
        .with_writer(std::io::stderr as fn() -> std::io::Stderr)
        .with_ansi(format == LogFormat::Text && std::io::stderr().is_terminal());
    let result = match format {
        LogFormat::Text => registry
            .with(layer.event_format(format::Lines::Text))
            .try_init(),
        LogFormat::Json => registry
            .with(
                layer
                    .fmt_fields(JsonFields::default())
                    .event_format(format::Lines::Json),
            )
            .try_init(),
    };
    // Only fails when a subscriber is already installed (e.g. by a test harness).
    let _ = result;
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::{
        call::{Call, Kind, RequestId},
        *,
    };

    /// A shared buffer to log into.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> fmt::MakeWriter<'a> for Buffer {
        type Writer = Buffer;

        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    /// Captures what a subscriber of `format` writes while `f` runs.
    fn logged(format: LogFormat, f: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let layer = fmt::layer().with_ansi(false).with_writer(buffer.clone());
        let registry = tracing_subscriber::registry();
        match format {
            LogFormat::Text => tracing::subscriber::with_default(
                registry.with(layer.event_format(format::Lines::Text)),
                f,
            ),
            LogFormat::Json => tracing::subscriber::with_default(
                registry.with(
                    layer
                        .fmt_fields(JsonFields::default())
                        .event_format(format::Lines::Json),
                ),
                f,
            ),
        }
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    /// Logs one line outside any call, one in a call of each kind, and one in a call whose
    /// request id needs quoting in JSON.
    fn log_in_calls() {
        tracing::warn!(count = 2, "outside");
        let in_call = |call: Call, f: &dyn Fn()| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            runtime.block_on(call::scope(call, async { f() }));
        };
        let caller = |id: &'static str| RequestId::Caller(http::HeaderValue::from_static(id));
        in_call(Call::new(caller("r-1"), Kind::Rpc, "a.B/C"), &|| {
            tracing::info!(action = "create", "in rpc")
        });
        in_call(Call::new(caller("say\"hi\""), Kind::Http, "leaks"), &|| {
            tracing::info!("in http")
        });
    }

    #[test]
    fn lines_carry_their_call_where_a_span_would_be() {
        let text = logged(LogFormat::Text, log_in_calls);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].ends_with(" WARN outside count=2"), "{text}");
        assert!(
            lines[1].ends_with("  INFO rpc{request_id=r-1 rpc=a.B/C}: in rpc action=\"create\""),
            "{text}"
        );
        assert!(
            lines[2].ends_with(r#"INFO http{request_id=say"hi" route=leaks}: in http"#),
            "{text}"
        );

        let json = logged(LogFormat::Json, log_in_calls);
        let lines: Vec<serde_json::Value> = json
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines[0]["level"], "WARN");
        assert_eq!(lines[0]["message"], "outside");
        assert_eq!(lines[0]["count"], 2);
        assert!(lines[0].get("span").is_none());
        assert_eq!(lines[1]["message"], "in rpc");
        assert_eq!(lines[1]["action"], "create");
        assert_eq!(
            lines[1]["span"],
            serde_json::json!({"request_id": "r-1", "rpc": "a.B/C"})
        );
        assert_eq!(
            lines[2]["span"],
            serde_json::json!({"request_id": "say\"hi\"", "route": "leaks"})
        );
        assert!(lines[2]["timestamp"].as_str().unwrap().ends_with('Z'));
    }
}
