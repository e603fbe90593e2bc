//! README.md's Rust programs, compiled in by `build.rs`: `hreg-readme list`
//! prints the README line of each, `hreg-readme LINE` runs that one (its
//! exit status is the program's). `tests/tests/newcomer.rs` runs them all
//! against the quickstart's daemon.

include!(concat!(env!("OUT_DIR"), "/readme_rust.rs"));

fn main() -> std::process::ExitCode {
    let arg = std::env::args().nth(1).unwrap_or_default();
    if arg == "list" {
        for (line, _) in BLOCKS {
            println!("{line}");
        }
        return std::process::ExitCode::SUCCESS;
    }
    match BLOCKS.iter().find(|(line, _)| line.to_string() == arg) {
        Some((_, run)) => run(),
        None => {
            eprintln!("hreg-readme: no Rust block starts on README.md line {arg:?}; `hreg-readme list` names them");
            std::process::ExitCode::from(2)
        }
    }
}
