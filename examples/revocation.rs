//! Measures how fast a revocation through one replica reaches another: for each trial, a
//! fresh token is verified (and so cached) on replica B, then disabled or deleted through
//! replica A; B is polled back to back until it refuses the token.
//!
//!     cargo run --release --example revocation -- \
//!         --a http://127.0.0.1:50051 --b http://127.0.0.1:50052 \
//!         --admin-secret-file admin.secret --trials 200
//!
//! Prints p50 / p99 / max of the time from A's acknowledgement to B's first refusal.

use std::time::{Duration, Instant};

use clap::Parser;
use token_authority::pb::v1::{
    CreateTokenRequest, DeleteTokenRequest, SetTokenEnabledRequest, Token, VerifyRequest,
    token_service_client::TokenServiceClient, verify_service_client::VerifyServiceClient,
};
use tonic::Request;

#[derive(Parser)]
struct Args {
    /// Replica that revokes.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    a: String,
    /// Replica that must refuse.
    #[arg(long, default_value = "http://127.0.0.1:50052")]
    b: String,
    /// File holding a `*:*` token's secret.
    #[arg(long)]
    admin_secret_file: std::path::PathBuf,
    /// Number of revocations (half disables, half deletes).
    #[arg(long, default_value_t = 200)]
    trials: usize,
}

fn authed<T>(secret: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {secret}").parse().unwrap());
    request
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let admin = std::fs::read_to_string(&args.admin_secret_file)?
        .trim()
        .to_owned();
    let mut tokens_a = TokenServiceClient::connect(args.a.clone()).await?;
    let mut verify_b = VerifyServiceClient::connect(args.b.clone()).await?;
    let run = Instant::now().elapsed().as_nanos();
    let mut delays = Vec::with_capacity(args.trials);
    for trial in 0..args.trials {
        let created = tokens_a
            .create_token(authed(
                &admin,
                CreateTokenRequest {
                    token: Some(Token {
                        name: format!("revocation-{run}-{trial}-{}", uuid::Uuid::now_v7()),
                        ..Default::default()
                    }),
                    ttl: None,
                },
            ))
            .await?
            .into_inner();
        let id = created.token.unwrap().id;
        let request = VerifyRequest {
            token: created.secret.clone(),
            ..Default::default()
        };
        for _ in 0..3 {
            let answer = verify_b.verify(request.clone()).await?.into_inner();
            anyhow::ensure!(
                answer.valid,
                "replica B does not accept a fresh token: {answer:?}"
            );
        }
        if trial % 2 == 0 {
            tokens_a
                .set_token_enabled(authed(
                    &admin,
                    SetTokenEnabledRequest { id, enabled: false },
                ))
                .await?;
        } else {
            tokens_a
                .delete_token(authed(&admin, DeleteTokenRequest { id }))
                .await?;
        }
        let acknowledged = Instant::now();
        loop {
            if !verify_b.verify(request.clone()).await?.into_inner().valid {
                delays.push(acknowledged.elapsed());
                break;
            }
            anyhow::ensure!(
                acknowledged.elapsed() < Duration::from_secs(10),
                "replica B still accepts after 10 s"
            );
        }
    }
    delays.sort();
    println!("trials: {}", delays.len());
    println!(
        "revocation through A refused by B after: p50 {:?}  p99 {:?}  max {:?}",
        percentile(&delays, 50.0),
        percentile(&delays, 99.0),
        delays.last().unwrap()
    );
    Ok(())
}
