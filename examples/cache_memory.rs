//! Measures the Verify cache's memory: resident bytes per cached token (as the cache keeps
//! it, encoded), for N tokens shaped like real ones (a few permissions, a CIDR, a binding, a little metadata).
//!
//!     cargo run --release --example cache_memory -- 1000000
//!
//! Prints the process's resident set size before and after filling the cache, and the
//! difference per entry. The whole process's RSS is measured, so allocator overhead counts.

use std::{sync::Arc, time::Duration};

use token_authority::{
    cache::{CacheSettings, Entry, TokenCache},
    domain::{
        permission::Permission,
        restrictions::Cidr,
        secret::{TokenPrefix, TokenSecret},
        token::{Token, now},
    },
    encoded::EncodedToken,
};
use uuid::Uuid;

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn sample_token(i: u64) -> Token {
    let secret = TokenSecret::generate(&TokenPrefix::default());
    let at = now();
    Token {
        id: Uuid::now_v7(),
        name: format!("service-token-{i}"),
        owner: format!("team-{}", i % 100),
        token_type: "service".into(),
        description: "deploys the billing service".into(),
        permissions: ["domains:read", "backends:write", "reports:read"]
            .iter()
            .map(|p| Permission::parse(p).unwrap())
            .collect(),
        read_only: false,
        allowed_cidrs: vec![Cidr::parse("10.0.0.0/8").unwrap()],
        allowed_hosts: vec![],
        bindings: [("reportId".to_owned(), format!("r-{i}"))].into(),
        metadata: serde_json::json!({"ticket": format!("OPS-{i}")})
            .as_object()
            .unwrap()
            .clone(),
        enabled: true,
        create_time: at,
        update_time: at,
        last_used_time: None,
        last_used_ip: None,
        use_count: 0,
        expire_time: None,
        created_by: Some(Uuid::now_v7()),
        display_hint: secret.display_hint(),
        secret_hash: secret.hash(),
        revision: 1,
        previous_hash: None,
        previous_hash_expire_time: None,
        max_uses: None,
        uses: 0,
        rate_limit: None,
        secret_reported_time: None,
    }
}

fn main() {
    let count: u64 = std::env::args()
        .nth(1)
        .map_or(1_000_000, |n| n.parse().expect("a number of tokens"));
    let cache = TokenCache::new(
        CacheSettings {
            max_entries: count,
            ttl: Duration::from_secs(3600),
            negative_ttl: Duration::from_secs(60),
        },
        true,
    );
    let before = resident_bytes();
    for i in 0..count {
        let token = sample_token(i);
        let entry = Entry::Found(Arc::new(EncodedToken::new(&token)));
        cache.fill(token.secret_hash, entry, cache.epoch());
    }
    let cached = cache.len();
    let after = resident_bytes();
    let per_entry = (after - before) as f64 / cached as f64;
    println!("tokens cached:        {cached}");
    println!("resident before:      {:.1} MiB", before as f64 / 1048576.0);
    println!("resident after:       {:.1} MiB", after as f64 / 1048576.0);
    println!("bytes per entry:      {per_entry:.0}");
    println!(
        "1,000,000 entries:    {:.0} MiB",
        per_entry * 1_000_000.0 / 1048576.0
    );
}
