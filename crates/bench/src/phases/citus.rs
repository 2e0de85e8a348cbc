//! The latency, publish and delivery phases again on a Citus cluster (`BENCH_CITUS_URL`: a
//! coordinator database with the extension and its workers registered; `make bench` starts a
//! durable coordinator and two workers with `scripts/citus.sh bench` when Citus is installed),
//! reported beside the same rows on plain PostgreSQL in this run. Both clusters share this
//! machine's two cores, so the ratio shows what distribution costs here, not what more nodes buy.

use super::{Bench, Options, delivery, latency, publish};
use crate::report::Report;
use crate::service::Service;
use serde_json::json;
use std::time::Duration;

/// The spread backlog on Citus: its fill goes through the coordinator, and a smaller backlog
/// still outlasts the window at the rates measured there.
const CITUS_BACKLOG: i64 = 50_000;

pub async fn run(b: &mut Bench) -> anyhow::Result<()> {
    let Some(url) = std::env::var("BENCH_CITUS_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        eprintln!(
            "bench: citus: skipped: BENCH_CITUS_URL is unset (make bench sets it when Citus is installed)"
        );
        b.report
            .detail("citus_skipped", "BENCH_CITUS_URL is unset".into());
        return Ok(());
    };
    // Migrating distributes every tenant table (hookrelay_storage::distribution).
    let svc = Service::start(&url).await?;
    let main = svc.org("bench").await?;
    svc.webhooks(&b.http, &main, 1, &format!("{}/hook", b.receiver))
        .await?;
    let spread = svc.org("bench-spread").await?;
    svc.webhooks(
        &b.http,
        &spread,
        b.opts.webhooks,
        &format!("{}/spread", b.receiver),
    )
    .await?;
    let mut opts = Options::from_env();
    opts.backlog = opts.backlog.min(CITUS_BACKLOG);
    let mut on_citus = Bench {
        opts,
        admin: svc.pool.clone(),
        cluster_url: url,
        svc,
        http: b.http.clone(),
        rx: b.rx.clone(),
        receiver: b.receiver.clone(),
        main,
        spread,
        report: Report::default(),
    };

    for phase in ["latency", "publish", "delivery"] {
        eprintln!("bench: citus, {phase}");
        let cpu = crate::cpu::Cpu::start(None);
        let outcome = match phase {
            "latency" => latency::run(&mut on_citus).await,
            "publish" => publish::single(&mut on_citus).await,
            _ => drains(&mut on_citus).await,
        };
        on_citus.report.cpu(phase, &cpu.busy());
        if let Err(err) = outcome {
            eprintln!("bench: citus, phase {phase} failed: {err:#}");
            on_citus
                .report
                .detail(&format!("{phase}_error"), format!("{err:#}").into());
        }
    }
    let Bench { svc, report, .. } = on_citus;
    svc.stop().await;
    b.report.absorb_beside(report, "citus", "on Citus: ");
    Ok(())
}

/// The delivery phase's two drains (one webhook, and fan-out 1 over many), under the same row
/// keys. Its bare claim → record ceiling is left out: that loop is one PostgreSQL's statement.
async fn drains(b: &mut Bench) -> anyhow::Result<()> {
    let seconds = b.opts.seconds;
    let window = Duration::from_secs_f64(seconds.max(20.0));
    let single = delivery::drain(
        &b.svc,
        &b.rx,
        b.main.id,
        delivery::env_backlog_single(seconds),
        Duration::from_secs_f64(seconds),
    )
    .await?;
    let spread = delivery::drain(&b.svc, &b.rx, b.spread.id, b.opts.backlog, window).await?;
    b.report.row(delivery::spread_row(b.opts.webhooks, &spread));
    b.report.row(delivery::single_row(&b.svc, &single));
    b.report.detail(
        "delivery",
        json!({"spread": spread, "single_webhook": single, "webhooks": b.opts.webhooks}),
    );
    Ok(())
}
