//! `make bench`: measures hookrelay on this machine and sets each figure beside a ceiling
//! measured in the same run on the same database (the machine is noisy: compare ratios).
//! Prints a table and writes `target/bench/report.json`. A benchmark, not a test: it asserts
//! nothing. `BENCH_SECONDS` sets the length of each timed phase (default 10); `BENCH_PHASES`
//! picks phases (comma-separated, default all but `history`, which runs when named or when
//! `BENCH_HISTORY_DB` is set).

mod cpu;
mod load;
mod phases;
mod receiver;
mod report;
mod service;
mod statements;

use anyhow::Context;
use phases::{Bench, Options};
use service::{Service, database_url};
use std::time::Instant;

fn selected_phases() -> Vec<String> {
    match std::env::var("BENCH_PHASES") {
        Ok(list) if !list.trim().is_empty() => {
            list.split(',').map(|p| p.trim().to_owned()).collect()
        }
        _ => phases::ALL
            .iter()
            .filter(|p| **p != "history" || std::env::var_os("BENCH_HISTORY_DB").is_some())
            .map(|p| (*p).to_owned())
            .collect(),
    }
}

async fn run_phase(b: &mut Bench, phase: &str) -> anyhow::Result<()> {
    match phase {
        "latency" => phases::latency::run(b).await,
        "publish" => phases::publish::single(b).await,
        "batch" => phases::publish::batch(b).await,
        "sustained" => phases::sustained::run(b).await,
        "delivery" => phases::delivery::run(b).await,
        "fanout" => phases::fanout::run(b).await,
        "ordered" => phases::ordered::run(b).await,
        "memory" => phases::memory::run(b).await,
        "scale" => phases::scale::run(b).await,
        "citus" => phases::citus::run(b).await,
        "history" => phases::history::run(b).await,
        other => anyhow::bail!(
            "unknown phase {other:?} (known: {})",
            phases::ALL.join(", ")
        ),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let opts = Options::from_env();
    let selected = selected_phases();
    let cluster_url =
        std::env::var("DATABASE_URL").context("DATABASE_URL (make bench provides one)")?;
    let admin = sqlx::PgPool::connect(&cluster_url).await?;
    let db = format!("hookrelay_bench_{}", std::process::id());
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db}")))
        .execute(&admin)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&admin)
        .await?;
    let svc = Service::start(&database_url(&cluster_url, &db)?).await?;
    let (receiver, rx) = receiver::start()?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        // Under the service's keep-alive (actix: 5 s): a connection idle past it is closed by
        // the server, and reusing it as it closes fails the request (seen in the ordered phase).
        .pool_idle_timeout(std::time::Duration::from_secs(4))
        .build()?;
    let main_org = svc.org("bench").await?;
    svc.webhooks(&http, &main_org, 1, &format!("{receiver}/hook"))
        .await?;
    let spread = svc.org("bench-spread").await?;
    svc.webhooks(&http, &spread, opts.webhooks, &format!("{receiver}/spread"))
        .await?;

    let mut bench = Bench {
        opts,
        admin,
        cluster_url,
        svc,
        http,
        rx,
        receiver,
        main: main_org,
        spread,
        report: Default::default(),
    };
    let started = Instant::now();
    for (i, phase) in selected.iter().enumerate() {
        if i > 0 {
            load::checkpoint(&bench.svc.pool).await;
        }
        eprintln!(
            "bench: {phase} ({:.0} s in)",
            started.elapsed().as_secs_f64()
        );
        let t0 = Instant::now();
        let cpu = cpu::Cpu::start(None);
        statements::reset(&bench.svc.pool).await;
        let outcome = run_phase(&mut bench, phase).await;
        bench.report.cpu(phase, &cpu.busy());
        if let Some(top) = statements::top(&bench.svc.pool).await {
            bench.report.detail(&format!("{phase}_statements"), top);
        }
        if let Err(err) = outcome {
            // One phase failing should not cost the figures of the others.
            eprintln!("bench: phase {phase} failed: {err:#}");
            bench
                .report
                .detail(&format!("{phase}_error"), format!("{err:#}").into());
        }
        bench.report.detail(
            &format!("{phase}_phase_seconds"),
            t0.elapsed().as_secs_f64().into(),
        );
    }

    let Bench {
        opts,
        admin,
        svc,
        mut report,
        ..
    } = bench;
    svc.stop().await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
    )))
    .execute(&admin)
    .await;

    report.print();
    report.detail("bench_seconds", opts.seconds.into());
    report.detail("phases", selected.into());
    report.detail("run_seconds", started.elapsed().as_secs_f64().into());
    std::fs::create_dir_all("target/bench")?;
    std::fs::write(
        "target/bench/report.json",
        serde_json::to_string_pretty(&report.to_json())?,
    )?;
    println!("\nwritten: target/bench/report.json");
    Ok(())
}
