//! A strict parser of the Prometheus text exposition format (0.0.4), to
//! check what `hregctl stats --prometheus` prints as a scraper would read
//! it, and stricter: every sample must belong to a family announced by its
//! own `# HELP` and `# TYPE` lines, families may not interleave or repeat,
//! a series may appear once, and counters must end in `_total`.

use std::collections::{BTreeMap, BTreeSet};

/// A metric family: its name, help text, type and samples.
#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    pub name: String,
    pub help: String,
    pub kind: String,
    pub samples: Vec<Sample>,
}

/// One sample: its labels and value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition: its families in the order given.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Exposition {
    pub families: Vec<Family>,
}

impl Exposition {
    /// The family called `name`.
    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.name == name)
    }

    /// The value of the series `name` with exactly `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.family(name)?
            .samples
            .iter()
            .find(|s| s.labels == wanted)
            .map(|s| s.value)
    }

    /// The sum of the values of every series of `name`.
    pub fn sum(&self, name: &str) -> Option<f64> {
        Some(self.family(name)?.samples.iter().map(|s| s.value).sum())
    }

    /// Every series as `name{k="v",...}` (labels sorted).
    pub fn series(&self) -> BTreeSet<String> {
        self.families
            .iter()
            .flat_map(|f| {
                f.samples.iter().map(move |s| {
                    let labels: Vec<String> =
                        s.labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
                    format!("{}{{{}}}", f.name, labels.join(","))
                })
            })
            .collect()
    }
}

/// Parses `text`, refusing anything a strict reader would.
pub fn parse(text: &str) -> Result<Exposition, String> {
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("the last line does not end with a newline".into());
    }
    let mut exposition = Exposition::default();
    // Families whose lines are over (another family started since).
    let mut closed: BTreeSet<String> = BTreeSet::new();
    for (number, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", number + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            check_metric_name(name).map_err(at)?;
            if closed.contains(name) || exposition.family(name).is_some() {
                return Err(at(format!("second HELP for {name}")));
            }
            if let Some(open) = exposition.families.last() {
                closed.insert(open.name.clone());
            }
            exposition.families.push(Family {
                name: name.to_string(),
                help: unescape_help(help).map_err(at)?,
                kind: String::new(),
                samples: Vec::new(),
            });
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or_else(|| at("TYPE without a type".into()))?;
            let family = exposition
                .families
                .last_mut()
                .filter(|f| f.name == name)
                .ok_or_else(|| at(format!("TYPE for {name} not right after its HELP")))?;
            if !family.kind.is_empty() {
                return Err(at(format!("second TYPE for {name}")));
            }
            if !family.samples.is_empty() {
                return Err(at(format!("TYPE for {name} after its samples")));
            }
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(at(format!("unknown type {kind:?}")));
            }
            if kind == "counter" && !name.ends_with("_total") {
                return Err(at(format!("counter {name} does not end in _total")));
            }
            family.kind = kind.to_string();
        } else if line.starts_with('#') {
            // A comment.
        } else {
            let (name, sample) = parse_sample(line).map_err(at)?;
            let family = exposition
                .families
                .last_mut()
                .filter(|f| f.name == name)
                .ok_or_else(|| {
                    at(if closed.contains(&name) {
                        format!("sample of {name} after another family")
                    } else {
                        format!("sample of {name} without its HELP and TYPE")
                    })
                })?;
            if family.kind.is_empty() {
                return Err(at(format!("sample of {name} without a TYPE")));
            }
            if family.samples.iter().any(|s| s.labels == sample.labels) {
                return Err(at("the same series twice".into()));
            }
            family.samples.push(sample);
        }
    }
    if let Some(f) = exposition.families.iter().find(|f| f.kind.is_empty()) {
        return Err(format!("{} has a HELP but no TYPE", f.name));
    }
    Ok(exposition)
}

/// A sample line: `name{label="value",...} value [timestamp]`.
fn parse_sample(line: &str) -> Result<(String, Sample), String> {
    let name_end = line.find(['{', ' ']).ok_or("a sample without a value")?;
    let name = &line[..name_end];
    check_metric_name(name)?;
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(after)?;
        labels = parsed;
        rest = after;
    }
    let rest = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let mut fields = rest.split(' ');
    let value = parse_value(fields.next().unwrap_or(""))?;
    if let Some(timestamp) = fields.next() {
        timestamp
            .parse::<i64>()
            .map_err(|_| format!("bad timestamp {timestamp:?}"))?;
    }
    if fields.next().is_some() {
        return Err("text after the timestamp".into());
    }
    Ok((name.to_string(), Sample { labels, value }))
}

/// The labels after `{`, up to and including `}`; returns the rest.
fn parse_labels(mut text: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    loop {
        if let Some(rest) = text.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let (name, rest) = text.split_once("=\"").ok_or("a label without =\"")?;
        check_label_name(name)?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("an unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape in a label value: {other:?}")),
                },
                Some((_, '\n')) => return Err("a raw newline in a label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        text = &rest[end + 1..];
        if let Some(more) = text.strip_prefix(',') {
            text = more;
        } else if !text.starts_with('}') {
            return Err("labels not separated by commas".into());
        }
    }
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "NaN" => Ok(f64::NAN),
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ if text
            .chars()
            .all(|c| c.is_ascii_digit() || "+-.eE".contains(c)) =>
        {
            text.parse::<f64>()
                .map_err(|_| format!("bad value {text:?}"))
        }
        _ => Err(format!("bad value {text:?}")),
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn check_metric_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        Ok(())
    } else {
        Err(format!("bad metric name {name:?}"))
    }
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__` (reserved).
fn check_label_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') && !name.starts_with("__") {
        Ok(())
    } else {
        Err(format!("bad label name {name:?}"))
    }
}

/// HELP text: only `\\` and `\n` are escapes.
fn unescape_help(text: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                other => return Err(format!("bad escape in HELP: {other:?}")),
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
# HELP hreg_objects Live objects.
# TYPE hreg_objects gauge
hreg_objects 3
# HELP hreg_ops_total Requests \\\\ served.\\nSince start.
# TYPE hreg_ops_total counter
hreg_ops_total 1.5e3 1700000000000
# a comment
# HELP hreg_uid_objects Per uid.
# TYPE hreg_uid_objects gauge
hreg_uid_objects{uid=\"1000\"} 2
hreg_uid_objects{uid=\"0\",note=\"a\\\"b\\\\c\\nd\"} NaN
";

    #[test]
    fn a_well_formed_exposition_parses() {
        let e = parse(GOOD).unwrap();
        assert_eq!(e.families.len(), 3);
        assert_eq!(e.value("hreg_objects", &[]), Some(3.0));
        assert_eq!(e.value("hreg_ops_total", &[]), Some(1500.0));
        assert_eq!(
            e.family("hreg_ops_total").unwrap().help,
            "Requests \\ served.\nSince start."
        );
        assert_eq!(e.value("hreg_uid_objects", &[("uid", "1000")]), Some(2.0));
        assert!(e
            .value("hreg_uid_objects", &[("uid", "0"), ("note", "a\"b\\c\nd")])
            .unwrap()
            .is_nan());
        assert_eq!(e.series().len(), 4);
    }

    #[test]
    fn malformed_expositions_are_refused() {
        let family = |body: &str| format!("# HELP m x\n# TYPE m gauge\n{body}\n");
        let cases: Vec<(&str, String)> =
            vec![
            ("no final newline", "# HELP m x\n# TYPE m gauge\nm 1".into()),
            ("no HELP", "# TYPE m gauge\nm 1\n".into()),
            ("no TYPE", "# HELP m x\nm 1\n".into()),
            ("HELP only", "# HELP m x\n".into()),
            ("unknown type", "# HELP m x\n# TYPE m meter\nm 1\n".into()),
            ("counter without _total", "# HELP m x\n# TYPE m counter\nm 1\n".into()),
            ("sample of another family", family("n 1")),
            ("bad name", "# HELP 1m x\n# TYPE 1m gauge\n1m 1\n".into()),
            ("dash in name", "# HELP m-x x\n# TYPE m-x gauge\nm-x 1\n".into()),
            ("bad value", family("m one")),
            ("empty value", family("m ")),
            ("bad timestamp", family("m 1 soon")),
            ("trailing text", family("m 1 2 3")),
            ("two spaces", family("m  1")),
            ("unquoted label", family("m{a=1} 1")),
            ("unterminated label", family("m{a=\"1} 1")),
            ("bad label name", family("m{1a=\"1\"} 1")),
            ("reserved label name", family("m{__a=\"1\"} 1")),
            ("bad escape", family("m{a=\"\\t\"} 1")),
            ("no comma", family("m{a=\"1\"b=\"2\"} 1")),
            ("label twice", family("m{a=\"1\",a=\"2\"} 1")),
            ("series twice", family("m{a=\"1\"} 1\nm{a=\"1\"} 2")),
            (
                "family interleaved",
                "# HELP m x\n# TYPE m gauge\nm 1\n# HELP n y\n# TYPE n gauge\nn 1\nm{a=\"b\"} 2\n"
                    .into(),
            ),
            ("second HELP", "# HELP m x\n# HELP m y\n# TYPE m gauge\nm 1\n".into()),
            ("second TYPE", "# HELP m x\n# TYPE m gauge\n# TYPE m gauge\nm 1\n".into()),
            ("bad HELP escape", "# HELP m a\\tb\n# TYPE m gauge\nm 1\n".into()),
        ];
        for (what, text) in cases {
            assert!(parse(&text).is_err(), "{what} was accepted:\n{text}");
        }
    }
}
