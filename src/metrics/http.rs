//! HTTP requests on the HTTP port, counted and timed by route and status.
//!
//! Labels stay bounded: routes are the fixed [`Route`]s, statuses a fixed list with every
//! other code as `other`. Each (route, status) pair has its own lock-free histogram,
//! made at startup.

use std::time::Duration;

use super::histogram::{Histograms, RPC_BOUNDS, Snapshot};

/// A route of the HTTP port, as metrics name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/v1/forward-auth` and below.
    ForwardAuth,
    /// `/v1/leaks`: ReportLeakedTokens as JSON.
    Leaks,
    /// `/v1/leaks/github`: GitHub's secret scanning.
    LeaksGithub,
    /// Any other path under `/v1/`: the JSON API (one label for every RPC: a path holds
    /// ids; the RPC's own metrics name it).
    Api,
    /// Any other path.
    Unknown,
}

impl Route {
    /// Every route, in label order.
    pub const ALL: [Route; 5] = [
        Route::ForwardAuth,
        Route::Leaks,
        Route::LeaksGithub,
        Route::Api,
        Route::Unknown,
    ];

    /// The route's label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::ForwardAuth => "forward_auth",
            Route::Leaks => "leaks",
            Route::LeaksGithub => "leaks_github",
            Route::Api => "api",
            Route::Unknown => "unknown",
        }
    }

    /// The route a request path belongs to.
    pub fn of(path: &str) -> Self {
        match path {
            "/v1/leaks" => Route::Leaks,
            "/v1/leaks/github" => Route::LeaksGithub,
            _ if path == "/v1/forward-auth" || path.starts_with("/v1/forward-auth/") => {
                Route::ForwardAuth
            }
            _ if path.starts_with("/v1/") => Route::Api,
            _ => Route::Unknown,
        }
    }
}

/// The statuses named; every other one counts as `other`.
const STATUSES: [u16; 11] = [200, 204, 400, 401, 403, 404, 405, 413, 429, 500, 503];

fn status_index(status: u16) -> usize {
    STATUSES
        .iter()
        .position(|s| *s == status)
        .unwrap_or(STATUSES.len())
}

fn status_name(index: usize) -> &'static str {
    const NAMES: [&str; 12] = [
        "200", "204", "400", "401", "403", "404", "405", "413", "429", "500", "503", "other",
    ];
    NAMES[index]
}

/// Latency histograms of every (route, status) pair; a histogram's count is the request
/// count.
#[derive(Debug)]
pub struct HttpTable {
    cells: Histograms,
}

const COLUMNS: usize = STATUSES.len() + 1;

impl Default for HttpTable {
    fn default() -> Self {
        Self {
            cells: Histograms::new(RPC_BOUNDS, Route::ALL.len() * COLUMNS),
        }
    }
}

impl HttpTable {
    /// Records one answered request.
    pub fn record(&self, route: Route, status: u16, elapsed: Duration) {
        self.cells
            .observe(route as usize * COLUMNS + status_index(status), elapsed);
    }

    /// Returns every (route, status, histogram) that recorded a request.
    pub fn used(&self) -> impl Iterator<Item = (&'static str, &'static str, Snapshot)> {
        self.cells
            .snapshots()
            .into_iter()
            .enumerate()
            .filter_map(|(i, cell)| {
                let route = Route::ALL[i / COLUMNS];
                (cell.count() > 0).then_some((route.as_str(), status_name(i % COLUMNS), cell))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        let table = HttpTable::default();
        table.record(
            Route::of("/v1/forward-auth/require/x:y"),
            200,
            Duration::ZERO,
        );
        table.record(Route::of("/anything/else"), 999, Duration::ZERO);
        let used: Vec<_> = table.used().map(|(r, s, h)| (r, s, h.count())).collect();
        assert_eq!(used, [("forward_auth", "200", 1), ("unknown", "other", 1)]);
        assert_eq!(Route::of("/v1/forward-authx"), Route::Api);
        assert_eq!(Route::of("/v1/tokens/0190:rotate"), Route::Api);
        assert_eq!(Route::of("/v1"), Route::Unknown);
    }
}
