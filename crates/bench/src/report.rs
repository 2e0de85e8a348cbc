//! The results: one row per figure (value, the ceiling measured beside it, the ratio and the
//! goal), printed as the final table and written with every phase's details to
//! `target/bench/report.json`.

use serde_json::{Value, json};

/// Which way is better, which also decides how the ratio reads: a share of the ceiling for
/// rates, a multiple of it for times and sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

#[derive(Debug, Clone, Copy)]
pub enum Goal {
    None,
    /// The value is at least this percentage of its ceiling.
    OfCeiling(f64),
    /// The value is at most this, in the row's unit.
    AtMost(f64),
    /// The value is at least this, in the row's unit (a figure quoted from another service).
    AtLeast(f64),
}

#[derive(Debug, Clone)]
pub struct Row {
    /// Stable name in report.json.
    pub key: &'static str,
    pub figure: String,
    pub value: f64,
    pub unit: &'static str,
    pub better: Better,
    /// The ceiling's value and what it is.
    pub ceiling: Option<(f64, String)>,
    pub goal: Goal,
}

impl Row {
    pub fn new(
        key: &'static str,
        figure: impl Into<String>,
        value: f64,
        unit: &'static str,
    ) -> Self {
        Self {
            key,
            figure: figure.into(),
            value,
            unit,
            better: Better::Higher,
            ceiling: None,
            goal: Goal::None,
        }
    }

    pub fn lower_is_better(mut self) -> Self {
        self.better = Better::Lower;
        self
    }

    pub fn ceiling(mut self, value: f64, what: impl Into<String>) -> Self {
        self.ceiling = Some((value, what.into()));
        self
    }

    pub fn goal(mut self, goal: Goal) -> Self {
        self.goal = goal;
        self
    }

    fn ratio(&self) -> Option<f64> {
        self.ceiling
            .as_ref()
            .filter(|(c, _)| *c > 0.0)
            .map(|(c, _)| self.value / c)
    }

    fn ratio_text(&self) -> String {
        match (self.ratio(), self.better) {
            (None, _) => "—".into(),
            (Some(r), Better::Higher) => format!("{:.0} %", 100.0 * r),
            (Some(r), Better::Lower) => format!("{r:.2}×"),
        }
    }

    pub fn met(&self) -> Option<bool> {
        match self.goal {
            Goal::None => None,
            Goal::OfCeiling(pct) => self.ratio().map(|r| 100.0 * r >= pct),
            Goal::AtMost(limit) => Some(self.value <= limit),
            Goal::AtLeast(limit) => Some(self.value >= limit),
        }
    }

    fn goal_text(&self) -> String {
        match self.goal {
            Goal::None => "—".into(),
            Goal::OfCeiling(pct) => format!("≥ {pct:.0} % of ceiling"),
            Goal::AtMost(limit) => format!("≤ {} {}", number(limit), self.unit),
            Goal::AtLeast(limit) => format!("≥ {} {}", number(limit), self.unit),
        }
    }
}

/// Enough digits to read, never a spurious ".0" on large numbers.
fn number(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[derive(Default)]
pub struct Report {
    rows: Vec<Row>,
    details: serde_json::Map<String, Value>,
    /// Per phase: cores kept busy by this process (service, load, receiver) and by PostgreSQL.
    cpu: Vec<(String, f64, f64)>,
}

impl Report {
    pub fn row(&mut self, row: Row) {
        self.rows.push(row);
    }

    /// A phase's measurements beyond its rows, under `key` in report.json.
    pub fn detail(&mut self, key: &str, value: Value) {
        self.details.insert(key.to_owned(), value);
    }

    /// Where the cores went during a phase.
    pub fn cpu(&mut self, phase: &str, busy: &Value) {
        let get = |k: &str| {
            busy[k].as_f64().unwrap_or(0.0)
                + if k == "this_process" {
                    busy["child"].as_f64().unwrap_or(0.0)
                } else {
                    0.0
                }
        };
        self.cpu
            .push((phase.to_owned(), get("this_process"), get("postgres")));
    }

    /// `other`'s rows, details and CPU figures as this report's, each keyed `{prefix}_{key}`, its
    /// figure led by `label`, and set beside this report's row of the same key (as its ceiling,
    /// so the ratio reads other / this) when there is one. Goals stay with the original rows.
    pub fn absorb_beside(&mut self, other: Report, prefix: &str, label: &str) {
        for row in other.rows {
            let beside = self.value(row.key);
            // A handful of rows per run: leaking their keys keeps `Row::key` a plain &'static str.
            let key: &'static str = Box::leak(format!("{prefix}_{}", row.key).into_boxed_str());
            let mut absorbed = Row {
                key,
                figure: format!("{label}{}", row.figure.trim_start_matches([' ', '…'])),
                ceiling: None,
                goal: Goal::None,
                ..row
            };
            if let Some(value) = beside {
                absorbed = absorbed.ceiling(value, "the same row on plain PostgreSQL, this run");
            }
            self.rows.push(absorbed);
        }
        for (key, value) in other.details {
            self.details.insert(format!("{prefix}_{key}"), value);
        }
        for (phase, ours, postgres) in other.cpu {
            self.cpu.push((format!("{prefix}_{phase}"), ours, postgres));
        }
    }

    /// The value of an earlier row, for a later phase to compare against.
    pub fn value(&self, key: &str) -> Option<f64> {
        self.rows.iter().find(|r| r.key == key).map(|r| r.value)
    }

    pub fn print(&self) {
        let width = self
            .rows
            .iter()
            .map(|r| r.figure.chars().count())
            .max()
            .unwrap_or(6)
            .max(6);
        println!(
            "\n{:<width$}  {:>16}  {:>16}  {:>7}  {:<20} {:<4} ceiling is",
            "figure", "value", "ceiling", "ratio", "goal", "met"
        );
        for r in &self.rows {
            let ceiling = r
                .ceiling
                .as_ref()
                .map(|(c, _)| format!("{} {}", number(*c), r.unit))
                .unwrap_or_else(|| "—".into());
            let what = r.ceiling.as_ref().map(|(_, w)| w.as_str()).unwrap_or("");
            let met = match r.met() {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "—",
            };
            println!(
                "{:<width$}  {:>16}  {:>16}  {:>7}  {:<20} {:<4} {what}",
                r.figure,
                format!("{} {}", number(r.value), r.unit),
                ceiling,
                r.ratio_text(),
                r.goal_text(),
                met,
            );
        }
        if !self.cpu.is_empty() {
            println!(
                "\ncores busy per phase (2.00 = both cores): hookrelay + bench load/receiver | PostgreSQL"
            );
            for (phase, ours, postgres) in &self.cpu {
                println!("  {phase:<10} {ours:>5.2} | {postgres:>5.2}");
            }
        }
    }

    pub fn to_json(&self) -> Value {
        let table: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                json!({
                    "key": r.key,
                    "figure": r.figure,
                    "value": r.value,
                    "unit": r.unit,
                    "ceiling": r.ceiling.as_ref().map(|(c, _)| c),
                    "ceiling_is": r.ceiling.as_ref().map(|(_, w)| w),
                    "ratio": r.ratio(),
                    "goal": r.goal_text(),
                    "goal_met": r.met(),
                })
            })
            .collect();
        let mut out = self.details.clone();
        out.insert("table".into(), Value::Array(table));
        out.insert(
            "cores_busy_per_phase".into(),
            self.cpu
                .iter()
                .map(|(p, o, pg)| json!({"phase": p, "hookrelay_and_bench": o, "postgres": pg}))
                .collect(),
        );
        Value::Object(out)
    }
}
