//! The committed `include/hreg.h`: it must be exactly what cbindgen makes
//! from `src/ffi.rs` now (run with `HREG_BLESS=1` to rewrite it), and it
//! must carry the C API contract's numbers and layouts, checked by a C
//! compiler with static assertions.

use std::path::{Path, PathBuf};
use std::process::Command;

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn generate() -> String {
    let dir = crate_dir();
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/ffi.rs"))
        .generate()
        .expect("cbindgen generates the header");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).expect("header is UTF-8")
}

#[test]
fn committed_header_matches_the_source() {
    let path = crate_dir().join("include/hreg.h");
    let fresh = generate();
    if std::env::var_os("HREG_BLESS").is_some() {
        std::fs::write(&path, &fresh).expect("write include/hreg.h");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "{} is out of date with src/ffi.rs; regenerate it with \
         `HREG_BLESS=1 cargo test -p hreg-c --test header` and commit it",
        path.display()
    );
}

/// The contract's values and (x86_64) layouts, as a C compiler sees them.
const CONTRACT_C: &str = r#"
#include <hreg.h>
#include <stddef.h>

_Static_assert(HREG_OK == 0, "");
_Static_assert(HREG_ERR_INVALID == 1, "");
_Static_assert(HREG_ERR_STALE == 2, "");
_Static_assert(HREG_ERR_DENIED == 3, "");
_Static_assert(HREG_ERR_TOO_BIG == 4, "");
_Static_assert(HREG_ERR_BUFFER == 5, "");
_Static_assert(HREG_ERR_QUOTA == 6, "");
_Static_assert(HREG_ERR_NOT_HELD == 7, "");
_Static_assert(HREG_ERR_CONNECT == 8, "");
_Static_assert(HREG_ERR_DISCONNECTED == 9, "");
_Static_assert(HREG_ERR_VERSION == 10, "");
_Static_assert(HREG_ERR_PROTOCOL == 11, "");
_Static_assert(HREG_ERR_IO == 12, "");
_Static_assert(HREG_SHARED == 0x1u, "");
_Static_assert(HREG_DETACHED == 0x2u, "");
_Static_assert(HREG_OP_INSERT == 1, "");
_Static_assert(HREG_OP_GET == 2, "");
_Static_assert(HREG_OP_REPLACE == 3, "");
_Static_assert(HREG_OP_RETAIN == 4, "");
_Static_assert(HREG_OP_RELEASE == 5, "");
_Static_assert(HREG_OP_REMOVE == 6, "");

/* The names the contract spells with tags, and the typedefs. */
enum hreg_status status_tag = HREG_OK;
enum hreg_opcode opcode_tag = HREG_OP_GET;
struct hreg_op op_tag;
struct hreg_stats stats_tag;
hreg_handle handle_type;
_Static_assert(sizeof(hreg_handle) == 8, "");

#if defined(__x86_64__)
_Static_assert(sizeof(hreg_op) == 40, "");
_Static_assert(offsetof(hreg_op, opcode) == 0, "");
_Static_assert(offsetof(hreg_op, flags) == 4, "");
_Static_assert(offsetof(hreg_op, handle) == 8, "");
_Static_assert(offsetof(hreg_op, buf) == 16, "");
_Static_assert(offsetof(hreg_op, len) == 24, "");
_Static_assert(offsetof(hreg_op, status) == 32, "");
_Static_assert(sizeof(hreg_stats) == 64, "");
_Static_assert(offsetof(hreg_stats, objects) == 0, "");
_Static_assert(offsetof(hreg_stats, value_bytes) == 8, "");
_Static_assert(offsetof(hreg_stats, sessions) == 16, "");
_Static_assert(offsetof(hreg_stats, ops) == 24, "");
_Static_assert(offsetof(hreg_stats, reserved) == 32, "");
#endif

/* The prototypes, exactly as the contract writes them. */
int  hreg_connect(const char *socket_path, hreg_client **out);
void hreg_disconnect(hreg_client *c);
int  hreg_insert(hreg_client *c, const void *data, size_t len, uint32_t flags,
                 hreg_handle *out);
int  hreg_get(hreg_client *c, hreg_handle h, void *buf, size_t cap, size_t *len);
int  hreg_replace(hreg_client *c, hreg_handle h, const void *data, size_t len);
int  hreg_retain(hreg_client *c, hreg_handle h);
int  hreg_release(hreg_client *c, hreg_handle h);
int  hreg_remove(hreg_client *c, hreg_handle h);
int  hreg_submit(hreg_client *c, hreg_op *ops, size_t n);
int  hreg_stats_get(hreg_client *c, hreg_stats *out);
int  hreg_get_ref(hreg_client *c, hreg_handle h, const void **data, size_t *len,
                  uint64_t *ref);
int  hreg_ref_release(hreg_client *c, uint64_t ref);
int  hreg_flush(hreg_client *c);
const char *hreg_strerror(int status);
const char *hreg_version(void);

int main(void) { return 0; }
"#;

fn compile(dir: &Path, std: &str) {
    let src = dir.join("contract.c");
    std::fs::write(&src, CONTRACT_C).expect("write contract.c");
    let output = Command::new("cc")
        .arg(format!("-std={std}"))
        .args([
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-fsyntax-only",
            "-I",
        ])
        .arg(crate_dir().join("include"))
        .arg(&src)
        .output()
        .expect("run cc");
    assert!(
        output.status.success(),
        "the header breaks the contract ({std}):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn header_carries_the_contract() {
    let dir = tempfile::tempdir().expect("temp dir");
    compile(dir.path(), "c11");
    compile(dir.path(), "c99");
}
