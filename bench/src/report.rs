//! What the run prints and writes: the result rows, the targets of issue 4
//! with their measured ratios, the Markdown table, the JSON file and the SVG
//! plot (drawn by hand: log-scale bars with min–max whiskers); and what
//! every other mode's report offers ([`ModeReport`]).

use crate::stats::{number, Measured, Summary};
use serde::Serialize;
use std::fmt::Write as _;

/// The report of a mode other than the sections (soak, attacks, burst).
pub trait ModeReport: Serialize {
    /// The tables and the verdict, for the terminal.
    fn markdown(&self) -> String;
    /// Whether the run passed (the bench exits non-zero otherwise).
    fn passed(&self) -> bool;
    /// The SVG plot, for modes that draw one.
    fn svg(&self) -> Option<String> {
        None
    }
}

/// The last line of a mode's report: `MODE: PASS`, or `MODE: FAIL:` and
/// why.
pub fn verdict(mode: &str, failures: &[String]) -> String {
    if failures.is_empty() {
        format!("\n{mode}: PASS\n")
    } else {
        format!("\n{mode}: FAIL: {}\n", failures.join("; "))
    }
}

/// Picks one figure of a row (for a plot panel, a target).
pub type Pick = fn(&Measured) -> Option<Summary>;

/// Throughput, Mops/s.
pub const MOPS: Pick = |m| m.mops;
/// Median latency, ns.
pub const P50: Pick = |m| m.p50_ns;

/// `a / b`, when both were measured.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(a? / b?)
}

/// One line of the table.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub section: &'static str,
    pub case: String,
    /// Stable name the targets look rows up by.
    pub key: String,
    #[serde(flatten)]
    pub measured: Measured,
    /// A figure other than speed (memory per object, CPU share).
    pub other: Option<Other>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Other {
    pub label: &'static str,
    pub value: Summary,
}

/// A target and how the run measured against it.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub name: String,
    /// The measured ratio (or figure); `None` when not measured this run.
    pub measured: Option<f64>,
    /// The bound the target sets.
    pub bound: f64,
    /// `true`: the figure must be at most the bound; else at least.
    pub at_most: bool,
    /// Why it was not measured, or what it was measured at.
    pub note: String,
}

impl Target {
    /// A target measured at `measured` (`None`: not measured this run;
    /// `note` then says why, else a default does).
    pub fn new(
        name: impl Into<String>,
        measured: Option<f64>,
        bound: f64,
        at_most: bool,
        note: &str,
    ) -> Target {
        Target {
            name: name.into(),
            measured,
            bound,
            at_most,
            note: if measured.is_none() && note.is_empty() {
                "not measured in this run".into()
            } else {
                note.into()
            },
        }
    }

    pub fn verdict(&self) -> &'static str {
        match self.measured {
            None => "n/a",
            Some(m) if (self.at_most && m <= self.bound) || (!self.at_most && m >= self.bound) => {
                "PASS"
            }
            Some(_) => "MISS",
        }
    }
}

/// Everything the run found.
#[derive(Debug, Serialize)]
pub struct Report {
    pub hardware: String,
    pub mode: &'static str,
    pub rows: Vec<Row>,
    pub targets: Vec<Target>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn row(&self, key: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.key == key)
    }

    /// The median of one figure of row `key`, if measured.
    pub fn median(&self, key: &str, pick: Pick) -> Option<f64> {
        self.row(key)
            .and_then(|r| pick(&r.measured))
            .map(|s| s.median)
    }

    /// The median of the other figure of row `key`, if measured.
    pub fn other_median(&self, key: &str) -> Option<f64> {
        self.row(key)
            .and_then(|r| r.other.as_ref())
            .map(|o| o.value.median)
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "hardware: {}  \nmode: {}\n", self.hardware, self.mode);
        let _ = writeln!(
            out,
            "| section | case | Mops/s | p50 ns | p99 ns | p99.9 ns | other |"
        );
        let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---|");
        let cell = |s: &Option<Summary>| s.as_ref().map_or("–".to_string(), Summary::cell);
        for r in &self.rows {
            let other = r.other.as_ref().map_or("".to_string(), |o| {
                format!("{}: {}", o.label, o.value.cell())
            });
            let m = &r.measured;
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                r.section,
                r.case,
                cell(&m.mops),
                cell(&m.p50_ns),
                cell(&m.p99_ns),
                cell(&m.p999_ns),
                other
            );
        }
        let _ = writeln!(out, "\nFigures: median of the repetitions (min–max).\n");
        let _ = writeln!(out, "| target | measured | bound | verdict | note |");
        let _ = writeln!(out, "|---|---:|---:|---|---|");
        for t in &self.targets {
            let _ = writeln!(
                out,
                "| {} | {} | {} {} | {} | {} |",
                t.name,
                t.measured.map_or("–".to_string(), number),
                if t.at_most { "≤" } else { "≥" },
                number(t.bound),
                t.verdict(),
                t.note
            );
        }
        for note in &self.notes {
            let _ = writeln!(out, "\nnote: {note}");
        }
        out
    }

    /// Two panels: throughput of every row that has one, and p50 latency of
    /// every row that has one; log scales, whiskers from min to max.
    pub fn svg(&self) -> String {
        let panels: [(&str, Pick); 2] = [
            ("throughput, Mops/s (log scale; longer is better)", |m| {
                m.mops
            }),
            (
                "p50 latency per round trip, ns (log scale; shorter is better)",
                |m| m.p50_ns,
            ),
        ];
        const LABEL: f64 = 330.0;
        const BARS: f64 = 420.0;
        const ROW: f64 = 16.0;
        const PANEL: f64 = LABEL + BARS + 40.0;
        let bars: Vec<Vec<(String, Summary)>> = panels
            .iter()
            .map(|(_, pick)| {
                self.rows
                    .iter()
                    .filter_map(|r| {
                        pick(&r.measured).map(|s| (format!("{}: {}", r.section, r.case), s))
                    })
                    .filter(|(_, s)| s.median > 0.0)
                    .collect()
            })
            .collect();
        let longest = bars.iter().map(Vec::len).max().unwrap_or(0) as f64;
        let height = 60.0 + longest * ROW;
        let mut svg = String::new();
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height}" font-family="sans-serif" font-size="10">"#,
            PANEL * 2.0
        );
        let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
        for (p, ((title, _), rows)) in panels.iter().zip(&bars).enumerate() {
            let x0 = p as f64 * PANEL + LABEL;
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="16" font-size="12" font-weight="bold">{}</text>"#,
                p as f64 * PANEL + 4.0,
                escape(title)
            );
            if rows.is_empty() {
                continue;
            }
            let lo = rows
                .iter()
                .map(|(_, s)| s.min)
                .fold(f64::INFINITY, f64::min)
                .max(1e-9);
            let hi = rows.iter().map(|(_, s)| s.max).fold(0.0, f64::max);
            let (lo, hi) = (
                lo.log10().floor(),
                hi.log10().ceil().max(lo.log10().floor() + 1.0),
            );
            let x = |v: f64| x0 + (v.max(1e-12).log10() - lo) / (hi - lo) * BARS;
            let mut decade = lo;
            while decade <= hi {
                let gx = x(10f64.powf(decade));
                let _ = writeln!(
                    svg,
                    r##"<line x1="{gx:.1}" y1="30" x2="{gx:.1}" y2="{:.1}" stroke="#ddd"/><text x="{gx:.1}" y="28" text-anchor="middle">{}</text>"##,
                    height - 10.0,
                    number(10f64.powf(decade))
                );
                decade += 1.0;
            }
            for (i, (label, s)) in rows.iter().enumerate() {
                let y = 36.0 + i as f64 * ROW;
                let colour = colour_of(label);
                let _ = writeln!(
                    svg,
                    r##"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text><rect x="{x0:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{colour}"/><line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/><text x="{:.1}" y="{:.1}">{}</text>"##,
                    x0 - 4.0,
                    y + ROW * 0.7,
                    escape(label),
                    (x(s.median) - x0).max(1.0),
                    ROW - 4.0,
                    x(s.min),
                    y + ROW / 2.0 - 2.0,
                    x(s.max),
                    y + ROW / 2.0 - 2.0,
                    x(s.max) + 3.0,
                    y + ROW * 0.7,
                    number(s.median)
                );
            }
        }
        svg.push_str("</svg>\n");
        svg
    }
}

fn colour_of(label: &str) -> &'static str {
    match label.as_bytes().first() {
        Some(b'1') => "#8da0cb",
        Some(b'2') => "#a6d854",
        Some(b'3') => "#fc8d62",
        Some(b'4') => "#e78ac3",
        Some(b'5') => "#66c2a5",
        Some(b'7') => "#ffd92f",
        _ => "#bbbbbb",
    }
}

/// Text made safe for SVG.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// "model, N cores, M GiB RAM, Linux version" from /proc.
pub fn hardware() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem_kib: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    format!(
        "{model}, {cores} cores, {:.1} GiB RAM, Linux {}",
        mem_kib as f64 / (1 << 20) as f64,
        read("/proc/sys/kernel/osrelease").trim()
    )
}
