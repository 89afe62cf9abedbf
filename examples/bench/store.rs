//! The store-path scenarios: seeding many tokens straight into Postgres, a cold cache (each
//! seeded token verified once), and a flood of unknown secrets beside cached Verify.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use token_authority::{
    domain::secret::TokenSecret,
    pb::v1::{VerifyRequest, VerifyResult, verify_service_client::VerifyServiceClient},
};
use tonic::{Code, transport::Channel};

use crate::load::{Measured, histogram, record, status_text};

/// Makes `n` tokens (owner `bench-cold`) straight in the store's database, much faster
/// than CreateToken, and writes their secrets to `secrets`, one a line. Run it before
/// the server starts, so its cache is cold.
pub async fn seed(database_url: &str, n: usize, secrets: &Path) -> anyhow::Result<()> {
    let pool = sqlx::PgPool::connect(database_url)
        .await
        .context("seed: cannot connect to --database-url")?;
    let mut text = String::with_capacity(n * 56);
    let run: u32 = rand::random();
    for start in (0..n).step_by(5000) {
        let made: Vec<TokenSecret> = (start..n.min(start + 5000))
            .map(|_| TokenSecret::generate(&Default::default()))
            .collect();
        let hashes: Vec<Vec<u8>> = made.iter().map(|s| s.hash().as_bytes().to_vec()).collect();
        let names: Vec<String> = (start..start + made.len())
            .map(|i| format!("cold-{run:08x}-{i}"))
            .collect();
        sqlx::query(
            "INSERT INTO tokens (id, secret_hash, display_hint, name, owner, token_type, \
             description, permissions, read_only, allowed_cidrs, allowed_hosts, bindings, \
             metadata, enabled, create_time, update_time, use_count, revision) \
             SELECT gen_random_uuid(), h, 'ta_cold', n, 'bench-cold', 'personal', '', \
             '[\"domains:read\"]', false, '[]', '[]', '{}', '{}', true, now(), now(), 0, 1 \
             FROM unnest($1::bytea[], $2::text[]) AS t(h, n)",
        )
        .bind(&hashes)
        .bind(&names)
        .execute(&pool)
        .await
        .context("seed: insert")?;
        for secret in &made {
            text.push_str(secret.expose());
            text.push('\n');
        }
    }
    std::fs::write(secrets, text).with_context(|| format!("cannot write {}", secrets.display()))?;
    Ok(())
}

/// Verifies every secret of `secrets` once, `concurrency` at a time over `channels`: the
/// rate of a cold cache (every Verify a miss).
pub async fn cold(
    channels: &[Channel],
    secrets: &Path,
    concurrency: usize,
) -> anyhow::Result<Measured> {
    let text = std::fs::read_to_string(secrets)
        .with_context(|| format!("cannot read {}", secrets.display()))?;
    let requests: Arc<[VerifyRequest]> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|secret| VerifyRequest {
            token: secret.to_owned(),
            ..Default::default()
        })
        .collect();
    anyhow::ensure!(
        !requests.is_empty(),
        "{} holds no secret",
        secrets.display()
    );
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|task| {
            let mut client = VerifyServiceClient::new(channels[task % channels.len()].clone());
            let (requests, next) = (requests.clone(), next.clone());
            tokio::spawn(async move {
                let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
                let mut latency = histogram();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(request) = requests.get(i) else {
                        break;
                    };
                    let sent = Instant::now();
                    match client.verify(request.clone()).await {
                        Ok(reply) if reply.get_ref().valid => {
                            ok += 1;
                            record(&mut latency, sent.elapsed());
                        }
                        Ok(reply) => {
                            errors += 1;
                            first_error.get_or_insert(format!("result {}", reply.get_ref().result));
                        }
                        Err(status) => {
                            errors += 1;
                            first_error.get_or_insert(status_text(&status));
                        }
                    }
                }
                (ok, errors, first_error, latency)
            })
        })
        .collect();
    let mut measured = Measured {
        ok: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latency: histogram(),
        first_error: None,
        open: None,
    };
    for task in tasks {
        let (ok, errors, first_error, latency) = task.await?;
        measured.ok += ok;
        measured.errors += errors;
        measured.latency.add(&latency).expect("same bounds");
        if measured.first_error.is_none() {
            measured.first_error = first_error;
        }
    }
    measured.elapsed = start.elapsed();
    Ok(measured)
}

/// One flooding task: Verify of a new well-formed unknown secret each call, from this
/// connection's address. A NOT_FOUND (a store lookup) counts as a success, an over-budget
/// RESOURCE_EXHAUSTED as an error, so the row shows both rates.
pub async fn flood_call(client: &mut VerifyServiceClient<Channel>) -> Result<(), String> {
    let secret = TokenSecret::generate(&Default::default());
    let request = VerifyRequest {
        token: secret.expose().to_owned(),
        ..Default::default()
    };
    match client.verify(request).await {
        Ok(reply) if reply.get_ref().result() == VerifyResult::NotFound => Ok(()),
        Ok(reply) => Err(format!(
            "an unknown secret answered {}",
            reply.get_ref().result
        )),
        Err(status) if status.code() == Code::ResourceExhausted => Err("over budget".into()),
        Err(status) => Err(status_text(&status)),
    }
}
