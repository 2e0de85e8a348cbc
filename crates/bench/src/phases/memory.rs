//! Resident memory of the real release binary: a `hookrelay worker` child process on the bench
//! database, its VmRSS sampled every 100 ms while idle and then while it drains a backlog
//! (default 100,000 deliveries over the spread webhooks) queued in one transaction; the drain
//! rate is a cross-check against the in-process drain of the delivery phase.

use super::Bench;
use crate::load::{
    clear_undelivered, clear_undelivered_except, fill_backlog, wait_for_empty_queue,
};
use crate::report::Row;
use anyhow::Context;
use serde_json::json;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `HOOKRELAY_BIN`, else `hookrelay` beside this executable (both are built into target/release).
fn hookrelay_bin() -> anyhow::Result<PathBuf> {
    if let Ok(bin) = std::env::var("HOOKRELAY_BIN") {
        return Ok(bin.into());
    }
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .context("executable directory")?
        .join("hookrelay");
    anyhow::ensure!(
        bin.exists(),
        "{} is missing: `cargo build --release -p hookrelay` (scripts/bench.sh does)",
        bin.display()
    );
    Ok(bin)
}

/// (VmRSS, VmHWM) in KiB.
fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub async fn run(b: &mut Bench) -> anyhow::Result<()> {
    let bin = hookrelay_bin()?;
    let pool = b.svc.pool.clone();
    let org = b.spread.id;
    clear_undelivered_except(&pool, None).await?;
    let mut child = tokio::process::Command::new(&bin)
        .arg("worker")
        .envs(&b.svc.env)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id().context("child pid")?;
    let samples: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (samples, stop) = (samples.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                match rss_kib(pid) {
                    Some((rss, _)) => samples.lock().unwrap().push((Instant::now(), rss)),
                    None => break,
                }
            }
        })
    };
    let peak_between = |from: Instant, to: Instant| {
        samples
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t >= from && *t <= to)
            .map(|(_, kib)| *kib)
            .max()
            .unwrap_or(0)
    };

    // Idle: connected, listening, maintenance has run once. The backlog is written meanwhile in
    // one transaction, with fresh statistics (ANALYZE counts the transaction's own rows) and a
    // NOTIFY as a publish sends: the worker sees all of it at once, at commit.
    let spawned = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    eprintln!(
        "bench: memory, {} deliveries queued for a `hookrelay worker` child (pid {pid})",
        b.opts.memory_backlog
    );
    let mut tx = pool.begin().await?;
    let backlog = fill_backlog(&mut tx, org, b.opts.memory_backlog).await?;
    sqlx::query("ANALYZE delivery_jobs, webhook_deliveries")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(hookrelay_storage::events::JOBS_CHANNEL)
        .execute(&mut *tx)
        .await?;
    let received_before = b.rx.received();
    tx.commit().await?;
    let idle = peak_between(spawned, Instant::now());
    let drain_started = Instant::now();
    let cpu = crate::cpu::Cpu::start(Some(pid));
    let deadline = drain_started + Duration::from_secs(300);
    while b.rx.received() - received_before < backlog as u64 && Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            anyhow::bail!("the hookrelay worker exited during the drain");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_s = drain_started.elapsed().as_secs_f64();
    let received = b.rx.received() - received_before;
    // Here the worker is a process of its own: "child" is the service alone, "this_process"
    // the receiver (the in-process API is idle).
    let cores = cpu.busy();
    wait_for_empty_queue(&pool, org, Duration::from_secs(30)).await;
    // A moment after: does memory come back once the work is done?
    tokio::time::sleep(Duration::from_secs(2)).await;
    let peak = peak_between(drain_started, Instant::now());
    let after = samples.lock().unwrap().last().map(|s| s.1).unwrap_or(0);
    let hwm = rss_kib(pid).map(|(_, hwm)| hwm).unwrap_or(0);
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    // SIGTERM: the graceful stop an operator would use.
    let _ = tokio::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await;
    if tokio::time::timeout(Duration::from_secs(40), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
    clear_undelivered(&pool, org).await?;

    let rate = received as f64 / drain_s;
    let r = &mut b.report;
    r.row(Row::new("rss_idle", "hookrelay worker RSS, idle", mib(idle), "MiB").lower_is_better());
    r.row(
        Row::new(
            "rss_peak",
            format!("hookrelay worker RSS, peak draining {backlog}"),
            mib(peak),
            "MiB",
        )
        .lower_is_better()
        .ceiling(mib(idle), "its idle RSS (baseline)"),
    );
    let in_process = r.value("delivery_spread");
    let mut rate_row = Row::new(
        "rss_drain_rate",
        format!("  … its drain rate, {} webhooks", b.opts.webhooks),
        rate,
        "del/s",
    );
    if let Some(v) = in_process {
        rate_row = rate_row.ceiling(v, "in-process drain, same webhooks (cross-check)");
    }
    r.row(rate_row);
    r.detail(
        "memory",
        json!({
            "binary": bin.display().to_string(),
            "backlog": backlog,
            "idle_rss_mib": mib(idle),
            "peak_rss_mib": mib(peak),
            "rss_after_drain_mib": mib(after),
            "vm_hwm_mib": mib(hwm),
            "drain_seconds": drain_s,
            "received": received,
            "deliveries_per_s": rate,
            "samples": samples.lock().unwrap().len(),
            "cores_busy_during_drain": cores,
        }),
    );
    Ok(())
}
