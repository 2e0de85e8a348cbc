//! Resident memory of the real release binary: a `hookrelay worker` child process on the bench
//! database, its VmRSS sampled every 100 ms while idle and then while it drains a backlog
//! (default 100,000 deliveries over the spread webhooks) queued in one transaction; the drain
//! rate is a cross-check against the in-process drain of the delivery phase. Then a
//! `hookrelay api` child ingests 16 MiB Hubble batches, one alone and eight at once: the rise of
//! its peak RSS (VmHWM, reset before each) beside the body's size.

use super::Bench;
use crate::load::{
    clear_undelivered, clear_undelivered_except, fill_backlog, wait_for_empty_queue,
};
use crate::report::{Goal, Row};
use crate::service::Org;
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
    hubble_ingest(b).await
}

/// A valid Hubble batch of 1,000 packets just under the 16 MiB ingest limit: each carries a
/// ~15.5 KiB Base64 payload of its own (any text of whole 4-character Base64 groups decodes).
fn sixteen_mib_batch(seed: u64) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ seed;
    let mut body = b"{\"packets\":[".to_vec();
    for seq in 0..1000u64 {
        let payload: String = (0..15_868)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ALPHABET[(state % 64) as usize] as char
            })
            .collect();
        let packet = json!({
            "location": {"latitude": 52.37, "longitude": 4.89, "altitude": 2.0, "timestamp": 1_763_000_000 + seq},
            "device": {
                "id": format!("7b0c6a1e-4f2d-4c8a-9e1b-{seed:012}"), "name": format!("pallet-{seed}"),
                "tags": {"_env": "production", "location": "yard-b"},
                "payload": payload, "rssi": -80, "timestamp": 1_763_000_000 + seq,
                "counter": seq, "sequence_number": seq
            },
            "network_type": "TERRESTRIAL"
        });
        if seq > 0 {
            body.push(b',');
        }
        body.extend_from_slice(packet.to_string().as_bytes());
    }
    body.extend_from_slice(b"]}");
    body
}

/// An organization with a Hubble source and one webhook: (org, ingest path, Hubble token).
async fn hubble_tenant(
    b: &Bench,
    name: &str,
    receiver: &str,
) -> anyhow::Result<(Org, String, String)> {
    let org = b.svc.org(name).await?;
    let source: serde_json::Value = b
        .http
        .post(format!("{}/api/v1/sources", b.svc.api_base))
        .bearer_auth(org.token.as_str())
        .json(&json!({"kind": "hubble", "name": name}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    b.http
        .post(format!("{}/api/v1/webhooks", b.svc.api_base))
        .bearer_auth(org.token.as_str())
        .json(&json!({"url": receiver, "events": ["*"]}))
        .send()
        .await?
        .error_for_status()?;
    let path = format!(
        "/ingest/hubble/{}",
        source["id"].as_str().context("source id")?
    );
    let token = source["token"].as_str().context("source token")?.to_owned();
    Ok((org, path, token))
}

/// Peak RSS of a `hookrelay api` child ingesting 16 MiB Hubble batches: one alone, then eight
/// at once from four organizations (two each, the per-organization share of large bodies).
async fn hubble_ingest(b: &mut Bench) -> anyhow::Result<()> {
    let bin = hookrelay_bin()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = tokio::process::Command::new(&bin)
        .arg("api")
        .envs(&b.svc.env)
        .env("HOOKRELAY_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id().context("child pid")?;
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !b
        .http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        anyhow::ensure!(Instant::now() < deadline, "hookrelay api did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let receiver = format!("{}/hubble", b.receiver);
    let mut tenants = Vec::new();
    for n in 0..4 {
        tenants.push(hubble_tenant(b, &format!("bench-hubble-{n}"), &receiver).await?);
    }
    let push = |http: reqwest::Client, path: String, token: String, body: Vec<u8>| {
        let url = format!("{base}{path}");
        async move {
            let resp = http
                .post(url)
                .header("HTTP-X-HUBBLE-TOKEN", token)
                .header("content-type", "application/json")
                .body(body)
                .timeout(Duration::from_secs(120))
                .send()
                .await?;
            Ok::<u16, anyhow::Error>(resp.status().as_u16())
        }
    };
    // Warm up: connections and statement caches.
    let small = serde_json::to_vec(&json!({"packets": []}))?;
    let (_, path, token) = &tenants[0];
    push(b.http.clone(), path.clone(), token.clone(), small).await?;
    let reset_peak = || std::fs::write(format!("/proc/{pid}/clear_refs"), "5");

    let body = sixteen_mib_batch(1);
    let body_kib = body.len() as u64 / 1024;
    eprintln!(
        "bench: memory, one {body_kib} KiB Hubble batch to a `hookrelay api` child (pid {pid})"
    );
    reset_peak()?;
    let (before, _) = rss_kib(pid).context("child RSS")?;
    let started = Instant::now();
    let status = push(b.http.clone(), path.clone(), token.clone(), body).await?;
    let one_s = started.elapsed().as_secs_f64();
    anyhow::ensure!(status == 200, "the 16 MiB batch answered {status}");
    let (_, peak) = rss_kib(pid).context("child RSS")?;
    let one = peak.saturating_sub(before);

    let bodies: Vec<Vec<u8>> = (10..18).map(sixteen_mib_batch).collect();
    eprintln!("bench: memory, eight 16 MiB Hubble batches at once");
    reset_peak()?;
    let (before, _) = rss_kib(pid).context("child RSS")?;
    let started = Instant::now();
    let sends: Vec<_> = bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| {
            let (_, path, token) = &tenants[i % tenants.len()];
            push(b.http.clone(), path.clone(), token.clone(), body)
        })
        .collect();
    let mut statuses = std::collections::BTreeMap::<u16, u32>::new();
    for status in futures_join(sends).await {
        *statuses.entry(status?).or_default() += 1;
    }
    let eight_s = started.elapsed().as_secs_f64();
    let (_, peak) = rss_kib(pid).context("child RSS")?;
    let eight = peak.saturating_sub(before);
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
    for (org, _, _) in &tenants {
        clear_undelivered(&b.svc.pool, org.id).await?;
    }

    let body_mib = mib(body_kib);
    let r = &mut b.report;
    r.row(
        Row::new(
            "rss_hubble_one",
            "hookrelay api peak RSS rise, one 16 MiB Hubble batch",
            mib(one),
            "MiB",
        )
        .lower_is_better()
        .ceiling(body_mib, "the body's size (goal ≤ 3×)")
        .goal(Goal::AtMost(3.0 * body_mib)),
    );
    r.row(
        Row::new(
            "rss_hubble_eight",
            "  … eight at once (4 organizations)",
            mib(eight),
            "MiB",
        )
        .lower_is_better()
        .ceiling(body_mib, "one body's size"),
    );
    r.detail(
        "memory_hubble",
        json!({
            "body_bytes": body_kib * 1024,
            "one_rise_mib": mib(one),
            "one_ratio_to_body": one as f64 / body_kib as f64,
            "one_seconds": one_s,
            "eight_rise_mib": mib(eight),
            "eight_ratio_to_body": eight as f64 / body_kib as f64,
            "eight_seconds": eight_s,
            "eight_statuses": statuses,
        }),
    );
    Ok(())
}

/// Runs the futures concurrently and returns their outputs in order.
async fn futures_join<F: std::future::Future + Send + 'static>(futures: Vec<F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.expect("a send task panicked"));
    }
    out
}
