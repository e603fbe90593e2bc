//! C programs for the tests: compiled with the system `cc` against the
//! libhreg that cargo just built (found next to the running test's binary,
//! rpath set), each source once per test process. Used by the C tests of
//! `client-c/tests/c_api.rs` and by the restart stress test.
//!
//! The test package must depend on `hreg-c` (as a dev-dependency) so that
//! cargo builds the C library before the test runs.

use crate::bin_dir;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// The C client's directory (`client-c/`: its `include/`, `examples/`).
pub fn client_c_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../client-c")
}

/// The C test programs' directory (`tests/c/`).
pub fn c_tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("c")
}

/// Where compiled C programs go, for the life of this test process.
fn build_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
        .path()
}

/// Where cargo left the libraries it built for this test run: `deps/`
/// next to this test's binary (a test build does not copy them up).
pub fn built_dir() -> PathBuf {
    let deps = bin_dir().join("deps");
    if deps.join("libhreg_c.so").exists() && deps.join("libhreg_c.a").exists() {
        deps
    } else {
        bin_dir()
    }
}

/// The library cargo just built, under its SONAME too, as the dynamic
/// linker looks for it.
fn lib_dir() -> PathBuf {
    let built = built_dir().join("libhreg_c.so");
    assert!(built.exists(), "{} not built", built.display());
    let dir = build_dir().join("lib");
    if !dir.exists() {
        std::fs::create_dir(&dir).expect("mkdir lib");
        for name in ["libhreg.so", "libhreg.so.0"] {
            std::os::unix::fs::symlink(&built, dir.join(name)).expect("symlink");
        }
    }
    dir
}

/// Compiles `source` (with the `-Wall -Wextra -Werror` the C tests keep)
/// against the library cargo just built, once per test process; returns
/// the executable.
pub fn program(source: &Path) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<PathBuf, PathBuf>>> = OnceLock::new();
    let mut built = hreg_proto::locks::lock(BUILT.get_or_init(Default::default));
    if let Some(exe) = built.get(source) {
        return exe.clone();
    }
    let lib_dir = lib_dir();
    let name = source.file_stem().unwrap().to_string_lossy().into_owned();
    let exe = build_dir().join(&name);
    let output = Command::new("cc")
        .args([
            "-std=c11",
            "-D_GNU_SOURCE",
            "-g",
            "-O1",
            "-Wall",
            "-Wextra",
            "-Werror",
        ])
        .arg("-I")
        .arg(client_c_dir().join("include"))
        .arg(source)
        .arg("-o")
        .arg(&exe)
        .arg(format!("-L{}", lib_dir.display()))
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .args(["-lhreg", "-pthread"])
        .output()
        .unwrap_or_else(|e| panic!("cc {name}: {e} (a C compiler is needed: Debian's gcc)"));
    assert!(
        output.status.success(),
        "cc {name} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    built.insert(source.to_path_buf(), exe.clone());
    exe
}
