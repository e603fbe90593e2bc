//! What the daemon's value heaps take in memory, read from the heap memfds
//! themselves (`hreg-d<D>-h<K>`, through `/proc/PID/fd`): their allocated
//! pages, mapped or not, which RSS does not show (RSS counts only the pages
//! the daemon itself has touched).

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;

/// Bytes of pages allocated in the value heaps of the daemon `pid`, each
/// memfd counted once (clients' read-only reopens name the same file); 0
/// if its descriptors cannot be read.
pub fn heap_bytes(pid: i32) -> u64 {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    let mut seen = HashSet::new();
    let mut total = 0;
    for entry in fds.filter_map(Result::ok) {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if !is_heap_chunk(&target.to_string_lossy()) {
            continue;
        }
        if let Ok(meta) = std::fs::metadata(entry.path()) {
            if seen.insert((meta.dev(), meta.ino())) {
                total += meta.blocks() * 512;
            }
        }
    }
    total
}

/// Whether a descriptor's target names a heap chunk's memfd.
fn is_heap_chunk(target: &str) -> bool {
    target
        .split("memfd:hreg-d")
        .nth(1)
        .and_then(|rest| rest.split_once('-'))
        .is_some_and(|(domain, piece)| {
            domain.bytes().all(|b| b.is_ascii_digit())
                && piece
                    .strip_prefix('h')
                    .and_then(|k| k.split_whitespace().next())
                    .is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()))
        })
}

#[cfg(test)]
mod tests {
    use super::is_heap_chunk;

    #[test]
    fn heap_chunks_are_told_from_other_pieces() {
        assert!(is_heap_chunk("/memfd:hreg-d3-h12 (deleted)"));
        assert!(is_heap_chunk("/memfd:hreg-d0-h0"));
        for other in [
            "/memfd:hreg-d3-s0 (deleted)",
            "/memfd:hreg-d3-u1000 (deleted)",
            "/memfd:hreg-header (deleted)",
            "/memfd:hreg-session-1.0",
            "/tmp/state/d1-h0",
        ] {
            assert!(!is_heap_chunk(other), "{other}");
        }
    }
}
