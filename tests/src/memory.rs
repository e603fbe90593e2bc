//! What the daemon's value heaps take in memory, read from the heap memfds
//! themselves (`hreg-d<D>-h<K>`, through `/proc/PID/fd`): their allocated
//! pages, mapped or not, which RSS does not show (RSS counts only the pages
//! the daemon itself has touched). And the daemon's whole footprint
//! ([`footprint`]): its private memory plus every page of every memfd it
//! holds or maps, whoever touched the page.

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

/// What a daemon takes in memory at one moment, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    /// `VmRSS`: pages mapped in the daemon and present (private, file and
    /// shared memory it has touched).
    pub rss: u64,
    /// `RssAnon + RssFile`: its private memory (allocator, stacks, the
    /// reference tables and slot facts) and its binary's pages.
    pub private: u64,
    /// Allocated pages of every memfd the daemon holds (`/proc/PID/fd`) or
    /// maps (`/proc/PID/map_files`: session memory, which it keeps no
    /// descriptor of), each file counted once: heaps, slot tables, the
    /// header, session memory — including pages only a client touched,
    /// which RSS leaves out.
    pub memfds: u64,
    /// The heap chunks' part of `memfds` ([`heap_bytes`]).
    pub heap: u64,
}

impl Footprint {
    /// The daemon's memory: private pages plus its memfds' pages (RSS's
    /// shared part is within the latter).
    pub fn total(&self) -> u64 {
        self.private + self.memfds
    }

    /// The larger of each figure.
    pub fn max(self, other: Footprint) -> Footprint {
        Footprint {
            rss: self.rss.max(other.rss),
            private: self.private.max(other.private),
            memfds: self.memfds.max(other.memfds),
            heap: self.heap.max(other.heap),
        }
    }
}

/// The footprint of process `pid` now (zeroes for what cannot be read).
/// Mapped memfds are opened through `/proc/PID/map_files`, which takes
/// `CAP_SYS_ADMIN`; without it a mapping counts with the pages the daemon
/// touched (its `Rss` in `smaps`).
pub fn footprint(pid: i32) -> Footprint {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| kb_field(&status, name).unwrap_or(0);
    let mut seen = HashSet::new();
    let mut memfds = 0;
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for entry in fds.filter_map(Result::ok) {
            let is_memfd = std::fs::read_link(entry.path())
                .is_ok_and(|target| target.to_string_lossy().starts_with("/memfd:"));
            if is_memfd {
                memfds += file_pages(&entry.path(), &mut seen).unwrap_or(0);
            }
        }
    }
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut lines = smaps.lines().peekable();
    while let Some(header) = lines.next() {
        let mut words = header.split_whitespace();
        let range = words.next().unwrap_or_default();
        let name = words.nth(4).unwrap_or_default();
        // The mapping's fields, up to the next mapping's header.
        let mut rss = 0;
        while let Some(line) = lines.next_if(|l| !is_mapping_header(l)) {
            if let Some(bytes) = kb_field(line, "Rss") {
                rss = bytes;
            }
        }
        if name.starts_with("/memfd:") {
            let file = std::path::PathBuf::from(format!("/proc/{pid}/map_files/{range}"));
            memfds += file_pages(&file, &mut seen).unwrap_or(rss);
        }
    }
    Footprint {
        rss: field("VmRSS"),
        private: field("RssAnon") + field("RssFile"),
        memfds,
        heap: heap_bytes(pid),
    }
}

/// The value of the first line `FIELD: N kB` of `text` (`/proc/PID/status`,
/// `smaps`), in bytes.
pub fn kb_field(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kb| kb * 1024)
}

/// Bytes of the pages allocated to the file at `path`, or 0 if `seen`
/// already has it (it is added); `None` if it cannot be read.
fn file_pages(path: &std::path::Path, seen: &mut HashSet<(u64, u64)>) -> Option<u64> {
    let meta = std::fs::metadata(path).ok()?;
    Some(if seen.insert((meta.dev(), meta.ino())) {
        meta.blocks() * 512
    } else {
        0
    })
}

/// Whether a line of `smaps` starts a mapping (`start-end perms ...`).
fn is_mapping_header(line: &str) -> bool {
    line.split_whitespace()
        .next()
        .and_then(|range| range.split_once('-'))
        .is_some_and(|(a, b)| {
            !a.is_empty() && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_hexdigit())
        })
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
    fn smaps_headers_are_told_from_fields() {
        use super::is_mapping_header;
        assert!(is_mapping_header(
            "7f00a0000000-7f00a0100000 rw-s 00000000 00:01 5 /memfd:hreg-d0-h0 (deleted)"
        ));
        assert!(!is_mapping_header("Rss:                 120 kB"));
        assert!(!is_mapping_header("VmFlags: rd wr sh mr mw me ms sd"));
    }

    #[test]
    fn the_footprint_counts_a_mapped_memfd_once_with_its_pages() {
        use std::io::Write;
        let before = super::footprint(std::process::id() as i32);
        let fd = rustix::fs::memfd_create("hreg-footprint-test", rustix::fs::MemfdFlags::CLOEXEC)
            .unwrap();
        let mut file = std::fs::File::from(fd);
        file.write_all(&vec![7u8; 1 << 20]).unwrap();
        let after = super::footprint(std::process::id() as i32);
        assert!(
            after.memfds >= before.memfds + (1 << 20),
            "{before:?} -> {after:?}"
        );
        assert!(after.total() >= after.memfds);
    }

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
