//! Keeps the Verify cache honest across replicas: listens to the store's change feed and
//! evicts what other replicas changed. While the feed is down the cache is bypassed; when it
//! is back, the cache is flushed (changes may have been missed) and trusted again.

use std::{sync::Arc, time::Duration};

use tokio::{sync::watch, task::JoinHandle};

use crate::{
    cache::TokenCache,
    metrics::{ListenerState, Metrics},
    store::TokenStore,
    usage::stopped,
};

const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Spawns the listener. For a store without other replicas (SQLite) it trusts the cache
/// and ends at once.
pub fn spawn_listener(
    store: Arc<dyn TokenStore>,
    cache: Arc<TokenCache>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut retry = RETRY_MIN;
        loop {
            let subscribed = tokio::select! {
                subscribed = store.subscribe() => subscribed,
                () = stopped(&mut shutdown) => return,
            };
            let mut feed = match subscribed {
                Ok(Some(feed)) => feed,
                Ok(None) => {
                    cache.set_trusted(true);
                    metrics.set_listener_state(ListenerState::SingleNode);
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?retry, "cannot listen for token changes; Verify bypasses the cache");
                    tokio::select! {
                        () = tokio::time::sleep(retry) => {}
                        () = stopped(&mut shutdown) => return,
                    }
                    retry = (retry * 2).min(RETRY_MAX);
                    continue;
                }
            };
            // Listening now: anything changed before this point is flushed, anything after
            // will be heard. The cache is trusted for as long as `listening` lives.
            cache.invalidate_all();
            let listening = Listening::start(cache.clone(), metrics.clone());
            retry = RETRY_MIN;
            tracing::info!("listening for token changes; Verify cache trusted");
            loop {
                let next = tokio::select! {
                    next = feed.next() => next,
                    () = stopped(&mut shutdown) => return,
                };
                match next {
                    Ok(hash) => {
                        metrics.record_invalidation();
                        cache.invalidate(&hash);
                    }
                    Err(error) => {
                        drop(listening);
                        cache.invalidate_all();
                        tracing::warn!(%error, "lost the token change feed; Verify bypasses the cache until it is back");
                        break;
                    }
                }
            }
        }
    })
}

/// The cache is trusted while this lives: from a flush after a new listening connection
/// until that connection is lost, the listener stops, or its task ends or is aborted
/// (shutdown included). Whenever nothing listens, nothing is trusted.
struct Listening {
    cache: Arc<TokenCache>,
    metrics: Arc<Metrics>,
}

impl Listening {
    fn start(cache: Arc<TokenCache>, metrics: Arc<Metrics>) -> Self {
        cache.set_trusted(true);
        metrics.set_listener_state(ListenerState::Listening);
        Self { cache, metrics }
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.cache.set_trusted(false);
        self.metrics.set_listener_state(ListenerState::Connecting);
    }
}
