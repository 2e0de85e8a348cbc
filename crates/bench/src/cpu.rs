//! Where the two cores went during a measurement: CPU time of this process (the in-process
//! service, the load client and the receiver), of a child process, and of every process named
//! `postgres`, read from /proc. Ticks are taken as 1/100 s, Linux's USER_HZ.

use serde_json::{Value, json};
use std::time::Instant;

/// (command name, CPU seconds) of one process and its reaped children, from /proc/<pid>/stat.
/// The children count because PostgreSQL backends exit when a phase closes its pools: their
/// time moves into the postmaster's `cutime`/`cstime`, and would otherwise vanish from the sum.
fn cpu_of(stat: &str) -> Option<(&str, f64)> {
    let (head, rest) = stat.rsplit_once(") ")?;
    let comm = head.split_once(" (")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let mut ticks = 0.0;
    for field in 11..=14 {
        ticks += f.get(field)?.parse::<f64>().ok()?;
    }
    Some((comm, ticks / 100.0))
}

fn process_cpu(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| cpu_of(&s).map(|c| c.1))
        .unwrap_or(0.0)
}

/// The cluster's backends and helpers (on a shared machine also any other cluster's).
fn postgres_cpu() -> f64 {
    let mut total = 0.0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(stat) = std::fs::read_to_string(entry.path().join("stat"))
            && let Some(("postgres", seconds)) = cpu_of(&stat)
        {
            total += seconds;
        }
    }
    total
}

pub struct Cpu {
    at: Instant,
    this: f64,
    postgres: f64,
    child: Option<(u32, f64)>,
}

impl Cpu {
    pub fn start(child: Option<u32>) -> Self {
        Self {
            at: Instant::now(),
            this: process_cpu(std::process::id()),
            postgres: postgres_cpu(),
            child: child.map(|pid| (pid, process_cpu(pid))),
        }
    }

    /// Cores kept busy since `start`, by whom (2.0 = both cores of this machine).
    pub fn busy(&self) -> Value {
        let seconds = self.at.elapsed().as_secs_f64().max(1e-9);
        let mut out = json!({
            "this_process": (process_cpu(std::process::id()) - self.this) / seconds,
            "postgres": (postgres_cpu() - self.postgres) / seconds,
        });
        if let Some((pid, before)) = self.child {
            out["child"] = json!((process_cpu(pid) - before) / seconds);
        }
        out
    }
}
