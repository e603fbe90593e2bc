//! `hregctl stats --prometheus`: the registry's figures in the Prometheus
//! text exposition format (version 0.0.4), for the node exporter's textfile
//! collector or any scraper. Every metric name starts with `hreg_`, every
//! family has its `# HELP` and `# TYPE` lines, and counters end in `_total`.
//! A limit's metric is named after its config key (`max_bytes` is
//! `hreg_max_bytes`); the README's metrics table lists every family (a test
//! compares).

use std::fmt::Write as _;

/// A Prometheus metric type, as its `# TYPE` line spells it.
#[derive(Clone, Copy)]
enum Kind {
    Gauge,
    Counter,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        }
    }
}

/// Text in the exposition format, one metric family at a time.
#[derive(Default)]
struct Exposition(String);

impl Exposition {
    /// A family with one unlabelled sample.
    fn single(&mut self, name: &str, kind: Kind, help: &str, value: u64) {
        self.labelled(name, kind, help, "", [(String::new(), value)]);
    }

    /// A family whose samples carry one label, `label` (none when empty),
    /// with the given values; without samples it keeps its HELP and TYPE.
    fn labelled(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        label: &str,
        samples: impl IntoIterator<Item = (String, u64)>,
    ) {
        let out = &mut self.0;
        let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(out, "# TYPE {name} {}", kind.name());
        for (label_value, value) in samples {
            if label.is_empty() {
                let _ = writeln!(out, "{name} {value}");
            } else {
                let _ = writeln!(
                    out,
                    "{name}{{{label}=\"{}\"}} {value}",
                    escape_label(&label_value)
                );
            }
        }
    }
}

/// HELP text: backslash and newline escaped.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A label value: backslash, double quote and newline escaped.
fn escape_label(text: &str) -> String {
    escape_help(text).replace('"', "\\\"")
}

/// Every figure of STATS and USAGE as metric families.
pub fn exposition(stats: &hreg::Stats, usage: &hreg::UsageReply) -> String {
    use Kind::{Counter, Gauge};
    let mut e = Exposition::default();
    e.single(
        "hreg_objects",
        Gauge,
        "Live objects (for a caller other than root: those it may read, its own private objects and every SHARED one).",
        stats.objects,
    );
    e.single(
        "hreg_value_bytes",
        Gauge,
        "Bytes of the values of those objects.",
        stats.value_bytes,
    );
    e.single(
        "hreg_sessions",
        Gauge,
        "Attached sessions, the one taking these figures included.",
        stats.sessions,
    );
    e.single(
        "hreg_ops_total",
        Counter,
        "Data-path requests served since the daemon started.",
        stats.ops,
    );
    e.single(
        "hreg_ops_per_second",
        Gauge,
        "Data-path requests per second over the last second.",
        usage.ops_per_sec,
    );
    e.single(
        "hreg_reclaim_pending_bytes",
        Gauge,
        "Bytes of replaced or removed values waiting to be reused (borrowed references may hold them back); 0 for a caller other than root.",
        usage.reclaim_pending,
    );
    e.single(
        "hreg_uptime_seconds",
        Gauge,
        "Seconds since the daemon started.",
        usage.uptime_secs,
    );
    e.single(
        "hreg_max_objects",
        Gauge,
        "Limit on live objects in all (max_objects).",
        usage.max_objects,
    );
    e.single(
        "hreg_max_bytes",
        Gauge,
        "Limit on value bytes in all (max_bytes).",
        usage.max_bytes,
    );
    let uid = |figure: &dyn Fn(&hreg::UidUsage) -> u64| {
        usage
            .uids
            .iter()
            .map(|u| (u.uid.to_string(), figure(u)))
            .collect::<Vec<_>>()
    };
    e.labelled(
        "hreg_uid_objects",
        Gauge,
        "Live objects charged to a uid: those it created and still references, and others' it alone keeps alive (all uids for root, the caller's own otherwise).",
        "uid",
        uid(&|u| u.objects),
    );
    e.labelled(
        "hreg_uid_value_bytes",
        Gauge,
        "Value bytes charged to a uid.",
        "uid",
        uid(&|u| u.value_bytes),
    );
    e.labelled(
        "hreg_uid_references",
        Gauge,
        "Objects a uid's sessions reference (an entry per session and object).",
        "uid",
        uid(&|u| u.references),
    );
    e.labelled(
        "hreg_uid_reserved",
        Gauge,
        "Handles granted ahead to a uid's sessions for posted inserts and not used yet (each counts against the object limits like an object).",
        "uid",
        uid(&|u| u.reserved),
    );
    e.labelled(
        "hreg_uid_credit_bytes",
        Gauge,
        "Byte credit granted ahead to a uid's sessions and not spent yet (counts against the byte limits like value bytes).",
        "uid",
        uid(&|u| u.credit),
    );
    e.labelled(
        "hreg_uid_max_objects",
        Gauge,
        "Limit on live objects one uid may own (uid_max_objects).",
        "uid",
        uid(&|_| usage.uid_max_objects),
    );
    e.labelled(
        "hreg_uid_max_bytes",
        Gauge,
        "Limit on value bytes one uid may own (uid_max_bytes).",
        "uid",
        uid(&|_| usage.uid_max_bytes),
    );
    e.single(
        "hreg_uid_max_rings",
        Gauge,
        "Limit on the rings one uid may have open (uid_max_rings; root is exempt).",
        usage.uid_max_rings,
    );
    e.single(
        "hreg_uid_descriptor_share",
        Gauge,
        "The descriptors one uid may hold: its share of the daemon's (root is exempt).",
        usage.uid_max_fds,
    );
    let held = |figure: &dyn Fn(&hreg::UidHolds) -> u32| {
        usage
            .holds
            .iter()
            .map(|h| (h.uid.to_string(), u64::from(figure(h))))
            .collect::<Vec<_>>()
    };
    e.labelled(
        "hreg_uid_rings",
        Gauge,
        "Rings a uid has open (all uids for root, the caller's own otherwise).",
        "uid",
        held(&|h| h.rings),
    );
    e.labelled(
        "hreg_uid_descriptors",
        Gauge,
        "Descriptors the daemon holds for a uid: connections, doorbells, descriptors sent and not yet read.",
        "uid",
        held(&|h| h.fds),
    );
    e.labelled(
        "hreg_uid_descriptors_in_flight",
        Gauge,
        "Descriptors sent to a uid's connections and not yet read.",
        "uid",
        held(&|h| h.fds_in_flight),
    );
    e.labelled(
        "hreg_uid_max_references",
        Gauge,
        "Limit on objects one uid's sessions may reference together (uid_max_references).",
        "uid",
        uid(&|_| usage.uid_max_references),
    );
    e.labelled(
        "hreg_shard_objects",
        Gauge,
        "Live objects in each registry shard.",
        "shard",
        usage
            .shards
            .iter()
            .enumerate()
            .map(|(i, &n)| (i.to_string(), n)),
    );
    e.labelled(
        "hreg_worker_rings",
        Gauge,
        "Rings each worker thread serves.",
        "worker",
        usage
            .workers
            .iter()
            .enumerate()
            .map(|(i, w)| (i.to_string(), u64::from(w.rings))),
    );
    e.labelled(
        "hreg_worker_ops_total",
        Counter,
        "Data-path requests each worker thread has served.",
        "worker",
        usage
            .workers
            .iter()
            .enumerate()
            .map(|(i, w)| (i.to_string(), w.ops)),
    );
    e.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_has_help_and_type_and_every_name_is_hreg() {
        let usage = hreg::UsageReply {
            uids: vec![hreg::UidUsage {
                uid: 1000,
                objects: 2,
                value_bytes: 30,
                references: 2,
                reserved: 16,
                credit: 100,
            }],
            shards: vec![1, 1],
            ..Default::default()
        };
        let text = exposition(&hreg::Stats::default(), &usage);
        let mut described = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                described.push(rest.split(' ').next().unwrap().to_string());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                assert_eq!(
                    Some(rest.split(' ').next().unwrap()),
                    described.last().map(|s| s.as_str())
                );
            } else {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(name.starts_with("hreg_"), "{line}");
                assert_eq!(Some(name), described.last().map(|s| s.as_str()), "{line}");
            }
        }
        assert!(
            text.contains("hreg_uid_objects{uid=\"1000\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("hreg_shard_objects{shard=\"1\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(escape_help("x\\y\nz\""), "x\\\\y\\nz\"");
    }
}
