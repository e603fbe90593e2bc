//! The README's configuration reference against the real config struct: every
//! flag has a row naming its key, the defaults in the table are the real
//! ones, and the example file sets every key and is accepted.

use clap::CommandFactory;
use hregd::config::{Args, Config, FileConfig};
use std::path::Path;

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap()
}

fn section(text: &str) -> &str {
    let start = text
        .find("## Configuration reference")
        .expect("reference section");
    let rest = &text[start + 3..];
    &text[start..start + 3 + rest.find("\n## ").unwrap_or(rest.len())]
}

/// Every setting flag of hregd (not help, version, --config, --check-config,
/// --check-state).
fn setting_flags() -> Vec<String> {
    Args::command()
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|long| !["help", "version", "config", "check-config", "check-state"].contains(long))
        .map(str::to_string)
        .collect()
}

#[test]
fn every_flag_has_a_row_with_its_key() {
    let text = readme();
    let reference = section(&text);
    let flags = setting_flags();
    assert!(flags.len() >= 15, "{flags:?}");
    for flag in &flags {
        let key = flag.replace('-', "_");
        let row = reference
            .lines()
            .find(|l| l.starts_with(&format!("| `{key}` |")))
            .unwrap_or_else(|| panic!("no README row for `{key}`"));
        assert!(
            row.contains(&format!("`--{flag}`")),
            "row for {key} must name --{flag}: {row}"
        );
    }
    let rows = reference.lines().filter(|l| l.starts_with("| `")).count();
    assert_eq!(
        rows,
        flags.len(),
        "the table has rows for settings that do not exist"
    );
}

#[test]
fn defaults_in_the_table_are_the_real_ones() {
    let text = readme();
    let reference = section(&text);
    let defaults = Config::from_args(&Args {
        socket: Some("/tmp/x.sock".into()),
        ..Args::default()
    })
    .unwrap();
    for (key, value) in [
        ("shards", defaults.shards as u64),
        (
            "max_value_size",
            defaults.limits.registry.max_value_size as u64,
        ),
        ("max_objects", defaults.limits.registry.max_objects),
        ("max_bytes", defaults.limits.registry.max_bytes),
        ("max_sessions", defaults.limits.max_sessions as u64),
        ("max_rings", u64::from(defaults.layout.max_rings)),
        ("ring_entries", u64::from(defaults.layout.entries)),
        ("data_size", u64::from(defaults.layout.data_size)),
    ] {
        let row = reference
            .lines()
            .find(|l| l.starts_with(&format!("| `{key}` |")))
            .unwrap();
        let default_cell = row.split('|').nth(3).unwrap().trim();
        assert_eq!(default_cell, value.to_string(), "README default of {key}");
    }
}

#[test]
fn the_example_file_sets_every_key_and_is_accepted() {
    let text = readme();
    let reference = section(&text);
    let start = reference.find("```toml\n").expect("example file") + 8;
    let example = &reference[start..start + reference[start..].find("```").unwrap()];
    let file: FileConfig = toml::from_str(example).expect("the example parses");
    let keys: Vec<&str> = example
        .lines()
        .filter_map(|l| l.split(" = ").next())
        .collect();
    for flag in setting_flags() {
        assert!(
            keys.contains(&flag.replace('-', "_").as_str()),
            "example lacks {flag}"
        );
    }
    assert!(file.socket_mode.is_some() && file.log_level.is_some());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hregd.toml");
    std::fs::write(&path, example).unwrap();
    Config::from_args(&Args {
        config: Some(path),
        ..Args::default()
    })
    .expect("the example is valid");
}
