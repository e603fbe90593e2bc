//! The properties both fuzz targets check, shared (by `#[path]`) between the
//! nightly fuzz targets in `fuzz_targets/` and the stable corpus replay in
//! `proto/tests/fuzz_corpus.rs`. Each function takes arbitrary bytes and
//! panics only when a property fails.

use hreg_proto::control::{ControlRequest, Reply};
use hreg_proto::entry::{self, ValueSource, ENTRY_SIZE, INLINE_CAPACITY};

/// Splits a `ring_entry` input: the first 4 bytes are the data-area size
/// (little-endian, zero-padded), the next 64 the entry (zero-padded).
pub fn split_ring_input(data: &[u8]) -> (u32, [u8; ENTRY_SIZE]) {
    let mut size = [0u8; 4];
    let head = data.len().min(4);
    size[..head].copy_from_slice(&data[..head]);
    let mut raw = [0u8; ENTRY_SIZE];
    let rest = &data[head..];
    let n = rest.len().min(ENTRY_SIZE);
    raw[..n].copy_from_slice(&rest[..n]);
    (u32::from_le_bytes(size), raw)
}

/// Decodes `data` both as a request and as a reply; whatever decodes must
/// encode back to as many bytes, which decode to the same value.
pub fn control_decode(data: &[u8]) {
    if let Ok(request) = ControlRequest::decode(data) {
        let again = request.encode();
        assert_eq!(
            ControlRequest::decode(&again),
            Ok(request.clone()),
            "{request:?}"
        );
        assert_eq!(again.len(), data.len(), "{request:?}");
    }
    if let Ok(reply) = Reply::decode(data) {
        let again = reply.encode();
        assert_eq!(Reply::decode(&again), Ok(reply.clone()), "{reply:?}");
        assert_eq!(again.len(), data.len(), "{reply:?}");
    }
}

/// Parses an entry for a data area of the given size; whatever parses must
/// name only ranges inside the data area, a non-zero handle where one is
/// needed and known flags.
pub fn ring_entry(data: &[u8]) {
    let (data_size, raw) = split_ring_input(data);
    let parsed = entry::RingRequest::parse(&raw, data_size);
    assert_eq!(
        parsed,
        entry::RingRequest::parse(&raw, data_size),
        "parse is pure"
    );
    let Ok(request) = parsed else {
        return;
    };
    let inside = |off: u32, len: usize| {
        (off as usize)
            .checked_add(len)
            .is_some_and(|end| end <= data_size as usize)
    };
    let value_ok = |value: ValueSource| match value {
        ValueSource::Inline { len } => len <= INLINE_CAPACITY,
        ValueSource::Data { off, len } => inside(off, len),
        ValueSource::Staged { .. } => true,
    };
    let sqe = entry::Sqe::decode(&raw);
    match request {
        entry::RingRequest::Insert { flags, value, into } => {
            assert_eq!(flags & !hreg_proto::flags::ALL, 0, "{request:?}");
            assert!(value_ok(value), "{request:?} with data size {data_size}");
            assert_eq!(into.map_or(0, |h| h.get()), sqe.handle);
            if entry::RingRequest::is_posted(&sqe) {
                assert!(into.is_some(), "a posted insert names its handle");
            }
        }
        entry::RingRequest::Replace { handle, value } => {
            assert_eq!(handle.get(), sqe.handle);
            assert_eq!(sqe.obj_flags, 0);
            assert!(value_ok(value), "{request:?} with data size {data_size}");
        }
        entry::RingRequest::Get {
            handle,
            region_off,
            region_len,
            ..
        } => {
            assert_eq!(handle.get(), sqe.handle);
            assert_eq!(sqe.obj_flags, 0);
            assert!(
                inside(region_off, region_len),
                "{request:?} with data size {data_size}"
            );
        }
        entry::RingRequest::Retain { handle }
        | entry::RingRequest::Release { handle }
        | entry::RingRequest::Remove { handle } => {
            assert_eq!(handle.get(), sqe.handle);
            assert_eq!(sqe.obj_flags, 0);
        }
        entry::RingRequest::StageWrite { data_off, len, .. }
        | entry::RingRequest::StageRead { data_off, len, .. } => {
            assert_eq!(sqe.obj_flags, 0);
            assert!(
                inside(data_off, len),
                "{request:?} with data size {data_size}"
            );
        }
        entry::RingRequest::Reserve {
            region_off, want, ..
        } => {
            assert_eq!(sqe.obj_flags & !hreg_proto::flags::SHARED, 0);
            assert!((1..=entry::MAX_GRANT).contains(&want), "{request:?}");
            assert!(inside(region_off, want * 8), "{request:?}");
        }
        entry::RingRequest::Sync { give_back } => {
            assert!(!entry::RingRequest::is_posted(&sqe));
            assert_eq!(give_back, sqe.inline_u64());
        }
    }
    // Only INSERT (into a named handle), RETAIN and RELEASE may be posted.
    if entry::RingRequest::is_posted(&sqe) {
        assert!(matches!(
            request,
            entry::RingRequest::Insert { .. }
                | entry::RingRequest::Retain { .. }
                | entry::RingRequest::Release { .. }
        ));
    }
}
