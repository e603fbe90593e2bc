//! The C ABI itself: the types and `extern "C"` entry points of
//! `include/hreg.h`, which cbindgen generates from this file (see
//! `cbindgen.toml`; `tests/header.rs` fails when the two drift apart).
//! Every `unsafe` of libhreg is here: C hands us raw pointers.

#![allow(unsafe_code)]
#![allow(non_camel_case_types)]

use hreg_proto::locks::lock;
use hreg_proto::Status;
use hreg_rs::{Client, Completion, Error, Handle, Op, OwnedValueRef};
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::{Mutex, OnceLock};

/// A connection to `hregd`: one session, usable from many threads at once
/// (each thread gets its own ring). Made by `hreg_connect`, freed by
/// `hreg_disconnect`.
pub struct hreg_client {
    /// Open references (`hreg_get_ref`), by token. Declared first: dropped
    /// before the client, so `hreg_disconnect` releases them all.
    refs: Mutex<OpenRefs>,
    client: Client,
}

/// Most references one client may have open at once (`hreg_get_ref`):
/// as many as a session has pins, whether a value is borrowed in place or
/// (short) copied, so the limit does not depend on value sizes.
const MAX_REFS: usize = hreg_proto::pins::PIN_ENTRIES;

/// A client's open references. Tokens are never 0 and never reused.
#[derive(Default)]
struct OpenRefs {
    last: u64,
    open: HashMap<u64, OwnedValueRef>,
}

/// The name of an object in the registry. 0 is never a valid handle.
pub type hreg_handle = u64;

/// The status every function returns (as an `int`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum hreg_status {
    /// Success.
    HREG_OK = 0,
    /// A bad argument: NULL, handle 0, an unknown flag or opcode.
    HREG_ERR_INVALID = 1,
    /// The object behind the handle is gone.
    HREG_ERR_STALE = 2,
    /// Not yours and not shared, or not yours to change.
    HREG_ERR_DENIED = 3,
    /// The value is longer than the daemon's maximum.
    HREG_ERR_TOO_BIG = 4,
    /// The buffer is too small; `*len` says how much is needed.
    HREG_ERR_BUFFER = 5,
    /// A limit on objects, bytes or sessions would be passed.
    HREG_ERR_QUOTA = 6,
    /// Release without a reference held.
    HREG_ERR_NOT_HELD = 7,
    /// No daemon at the socket path.
    HREG_ERR_CONNECT = 8,
    /// The daemon went away. Transient when the daemon keeps its state and
    /// the client resumes its session (by itself, within the grace period);
    /// else sticky. An op that got it may or may not have been applied.
    HREG_ERR_DISCONNECTED = 9,
    /// Protocol versions differ.
    HREG_ERR_VERSION = 10,
    /// The peer broke the protocol.
    HREG_ERR_PROTOCOL = 11,
    /// An operating-system error (also: out of memory).
    HREG_ERR_IO = 12,
}

/// INSERT flag: other users may read the object.
pub const HREG_SHARED: u32 = 0x1_u32;
/// INSERT flag: the object lives until `hreg_remove`, not tied to a session;
/// the inserting session gets no reference.
pub const HREG_DETACHED: u32 = 0x2_u32;

/// The operation of an `hreg_op`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum hreg_opcode {
    /// Create an object from `buf`/`len` with `flags`; the new handle is
    /// written to `handle`.
    HREG_OP_INSERT = 1,
    /// Read the value of `handle` into `buf` (capacity `len`); `len` becomes
    /// the value's length (also on HREG_ERR_BUFFER).
    HREG_OP_GET = 2,
    /// Replace the value of `handle` with `buf`/`len`.
    HREG_OP_REPLACE = 3,
    /// One more reference to `handle` for this session.
    HREG_OP_RETAIN = 4,
    /// Drop one of this session's references to `handle`.
    HREG_OP_RELEASE = 5,
    /// Kill the object now, whoever references it.
    HREG_OP_REMOVE = 6,
}

/// One operation of a batch (`hreg_submit`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct hreg_op {
    /// An `hreg_opcode` value.
    pub opcode: u32,
    /// INSERT only (HREG_SHARED, HREG_DETACHED); must be 0 on other ops.
    pub flags: u32,
    /// Target; for INSERT, the new handle on return.
    pub handle: hreg_handle,
    /// Value in (INSERT, REPLACE) or buffer out (GET); the caller owns it.
    pub buf: *mut c_void,
    /// Value length, or buffer capacity; on return from GET, the value's
    /// length.
    pub len: usize,
    /// On return: this op's status.
    pub status: c_int,
}

/// The registry's figures (`hreg_stats_get`). A client of root sees all of
/// them; any other client sees the objects it may read — its uid's private
/// objects and every SHARED object (which anyone may enumerate) — and never
/// anything of another uid's private objects.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct hreg_stats {
    /// Live objects: all for root; for another uid, its own private objects
    /// and every SHARED one.
    pub objects: u64,
    /// Bytes of the values of those objects.
    pub value_bytes: u64,
    /// Attached sessions (past HELLO), of every uid.
    pub sessions: u64,
    /// Data-path requests served since the daemon started, of every uid.
    pub ops: u64,
    /// Zero; room to grow.
    pub reserved: [u64; 4],
}

// The C numbering is the protocol's numbering: one table, checked here.
const _: () = {
    let c = [
        hreg_status::HREG_OK,
        hreg_status::HREG_ERR_INVALID,
        hreg_status::HREG_ERR_STALE,
        hreg_status::HREG_ERR_DENIED,
        hreg_status::HREG_ERR_TOO_BIG,
        hreg_status::HREG_ERR_BUFFER,
        hreg_status::HREG_ERR_QUOTA,
        hreg_status::HREG_ERR_NOT_HELD,
        hreg_status::HREG_ERR_CONNECT,
        hreg_status::HREG_ERR_DISCONNECTED,
        hreg_status::HREG_ERR_VERSION,
        hreg_status::HREG_ERR_PROTOCOL,
        hreg_status::HREG_ERR_IO,
    ];
    assert!(c.len() == Status::ALL.len());
    let mut i = 0;
    while i < c.len() {
        assert!(c[i] as u32 == Status::ALL[i] as u32);
        i += 1;
    }
    assert!(HREG_SHARED == hreg_proto::flags::SHARED);
    assert!(HREG_DETACHED == hreg_proto::flags::DETACHED);
    assert!(hreg_opcode::HREG_OP_INSERT as u8 == hreg_proto::Opcode::Insert as u8);
    assert!(hreg_opcode::HREG_OP_GET as u8 == hreg_proto::Opcode::Get as u8);
    assert!(hreg_opcode::HREG_OP_REPLACE as u8 == hreg_proto::Opcode::Replace as u8);
    assert!(hreg_opcode::HREG_OP_RETAIN as u8 == hreg_proto::Opcode::Retain as u8);
    assert!(hreg_opcode::HREG_OP_RELEASE as u8 == hreg_proto::Opcode::Release as u8);
    assert!(hreg_opcode::HREG_OP_REMOVE as u8 == hreg_proto::Opcode::Remove as u8);
};

const OK: c_int = hreg_status::HREG_OK as c_int;
const INVALID: c_int = hreg_status::HREG_ERR_INVALID as c_int;
const TOO_BIG: c_int = hreg_status::HREG_ERR_TOO_BIG as c_int;
const BUFFER: c_int = hreg_status::HREG_ERR_BUFFER as c_int;
const QUOTA: c_int = hreg_status::HREG_ERR_QUOTA as c_int;
const IO: c_int = hreg_status::HREG_ERR_IO as c_int;

/// The C status of a Rust error.
fn status_of(error: &Error) -> c_int {
    let status = error.status() as c_int;
    remember(status, &error.to_string());
    status
}

thread_local! {
    /// What the last failed call of this thread said (`hreg_last_error`),
    /// and the status it was for.
    static LAST_ERROR: std::cell::RefCell<(c_int, CString)> =
        std::cell::RefCell::new((OK, CString::default()));
}

/// Notes `text` as what this thread's failed call with `status` says.
fn remember(status: c_int, text: &str) {
    let text = CString::new(text.replace('\0', "")).unwrap_or_default();
    let _ = LAST_ERROR.try_with(|last| *last.borrow_mut() = (status, text));
}

/// Runs `body`, turning a panic (a bug in libhreg or below) into
/// HREG_ERR_IO instead of unwinding into C. A failure that no error
/// described (an argument check) is described by its status's text.
fn guard(body: impl FnOnce() -> c_int) -> c_int {
    let status = catch_unwind(AssertUnwindSafe(body)).unwrap_or(IO);
    if status != OK {
        let described = LAST_ERROR
            .try_with(|last| last.borrow().0 == status)
            .unwrap_or(true);
        if !described {
            let text = usize::try_from(status)
                .ok()
                .and_then(|i| Status::ALL.get(i))
                .map_or("unknown hreg status", |s| s.message());
            remember(status, text);
        }
    }
    status
}

/// The client behind a C pointer; NULL is INVALID.
///
/// # Safety
/// `c` is NULL or came from `hreg_connect` and was not disconnected.
unsafe fn client<'a>(c: *const hreg_client) -> Result<&'a Client, c_int> {
    // SAFETY: passed on from the caller.
    unsafe { whole_client(c) }.map(|c| &c.client)
}

/// The hreg_client behind a C pointer (client and reference table); NULL is
/// INVALID.
///
/// # Safety
/// As for `client`.
unsafe fn whole_client<'a>(c: *const hreg_client) -> Result<&'a hreg_client, c_int> {
    // SAFETY: the caller guarantees a non-NULL `c` is a live hreg_client
    // made by hreg_connect (a Box); it is only read, and both its fields
    // are Sync.
    unsafe { c.as_ref() }.ok_or(INVALID)
}

/// A value given by C: `data == NULL` with `len == 0` is empty.
///
/// # Safety
/// A non-NULL `data` points to `len` readable bytes that stay unchanged
/// for `'a`.
unsafe fn value<'a>(data: *const c_void, len: usize) -> Result<&'a [u8], c_int> {
    if len == 0 {
        return Ok(&[]);
    }
    if data.is_null() {
        return Err(INVALID);
    }
    if len > isize::MAX as usize {
        // No object is that large: no buffer of C's can be described.
        return Err(TOO_BIG);
    }
    // SAFETY: non-NULL, len within isize::MAX, and the caller guarantees
    // `len` readable bytes; u8 has alignment 1.
    Ok(unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) })
}

/// A buffer given by C for a value to be written in: NULL with `cap == 0`
/// is a size probe. At most `max` bytes of it are used (no value is longer).
///
/// # Safety
/// A non-NULL `buf` points to `cap` writable bytes that nothing else uses
/// for `'a`.
unsafe fn buffer<'a>(buf: *mut c_void, cap: usize, max: usize) -> Result<&'a mut [u8], c_int> {
    if cap == 0 {
        return Ok(&mut []);
    }
    if buf.is_null() {
        return Err(INVALID);
    }
    let cap = cap.min(max).min(isize::MAX as usize);
    // SAFETY: non-NULL, cap within isize::MAX and within what the caller
    // guarantees to be writable and unaliased; u8 has alignment 1.
    Ok(unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), cap) })
}

/// A non-zero handle; 0 is INVALID.
fn handle(h: hreg_handle) -> Result<Handle, c_int> {
    Handle::new(h).ok_or(INVALID)
}

/// The Rust op for a C op, or the status a local check gives it.
///
/// # Safety
/// `op.buf` is as `value` (INSERT, REPLACE) or `buffer` (GET) require.
unsafe fn prepare<'a>(op: &hreg_op, max_value: usize) -> Result<Op<'a>, c_int> {
    let code = hreg_proto::Opcode::from_public(op.opcode).ok_or(INVALID)?;
    code.check_flags(op.flags).map_err(|_| INVALID)?;
    use hreg_proto::Opcode as O;
    Ok(match code {
        O::Insert => Op::Insert {
            // SAFETY: passed on from the caller.
            value: unsafe { value(op.buf, op.len) }?,
            flags: op.flags,
        },
        O::Get => {
            let h = handle(op.handle)?;
            Op::Get {
                handle: h,
                // SAFETY: passed on from the caller.
                buf: unsafe { buffer(op.buf, op.len, max_value) }?,
            }
        }
        O::Replace => {
            let h = handle(op.handle)?;
            Op::Replace {
                handle: h,
                // SAFETY: passed on from the caller.
                value: unsafe { value(op.buf, op.len) }?,
            }
        }
        O::Retain => Op::Retain(handle(op.handle)?),
        O::Release => Op::Release(handle(op.handle)?),
        O::Remove => Op::Remove(handle(op.handle)?),
        O::StageWrite | O::StageRead | O::Reserve | O::Sync => return Err(INVALID),
    })
}

/// Whether some GET's buffer overlaps another op's buffer, so that the ops
/// cannot be handed to Rust together (one `&mut` may not alias anything).
fn buffers_overlap(ops: &[hreg_op]) -> bool {
    let mut ranges: Vec<(usize, usize, bool)> = ops
        .iter()
        .filter(|op| op.len > 0 && !op.buf.is_null())
        .filter(|op| matches!(op.opcode, 1..=3))
        .map(|op| {
            let start = op.buf as usize;
            let write = op.opcode == hreg_opcode::HREG_OP_GET as u32;
            (start, start.saturating_add(op.len), write)
        })
        .collect();
    ranges.sort_unstable();
    let (mut end_any, mut end_write) = (0, 0);
    for (start, end, write) in ranges {
        if start < end_write || (write && start < end_any) {
            return true;
        }
        end_any = end_any.max(end);
        if write {
            end_write = end_write.max(end);
        }
    }
    false
}

/// Runs `ops` in order: checks each, sends the valid ones to the Rust
/// client as one batch, and writes every op's status and outputs back.
/// Returns OK if all are OK, else the first failed op's status.
///
/// # Safety
/// Every op's `buf` is as `prepare` requires.
unsafe fn run(client: &Client, ops: &mut [hreg_op]) -> c_int {
    if ops.len() > 1 && buffers_overlap(ops) {
        // Buffers that alias cannot be borrowed at once: one op at a time,
        // which is the same order and the same results.
        for op in ops.iter_mut() {
            // SAFETY: passed on from the caller.
            unsafe { run(client, std::slice::from_mut(op)) };
        }
        return first_failure(ops);
    }
    let max_value = client.max_value_size();
    let mut batch = Vec::new();
    let mut index = Vec::new();
    if batch.try_reserve_exact(ops.len()).is_err() || index.try_reserve_exact(ops.len()).is_err() {
        ops.iter_mut().for_each(|op| op.status = IO);
        return IO;
    }
    for (i, op) in ops.iter_mut().enumerate() {
        // SAFETY: passed on from the caller; no two prepared buffers alias
        // (checked above), and `ops` itself is only touched after the batch.
        match unsafe { prepare(op, max_value) } {
            Ok(rust_op) => {
                batch.push(rust_op);
                index.push(i);
            }
            Err(status) => op.status = status,
        }
    }
    if !batch.is_empty() {
        let outcome = client.submit(&mut batch);
        drop(batch);
        match outcome {
            Ok(results) => {
                for (i, result) in index.into_iter().zip(results) {
                    complete(&mut ops[i], result);
                }
            }
            Err(e) => {
                let status = status_of(&e);
                index.into_iter().for_each(|i| ops[i].status = status);
            }
        }
    }
    first_failure(ops)
}

/// Writes one op's result back into its C op.
fn complete(op: &mut hreg_op, result: hreg_rs::Result<Completion>) {
    op.status = match result {
        Ok(Completion::Inserted(h)) => {
            op.handle = h.get();
            OK
        }
        Ok(Completion::Length(n)) => {
            op.len = n;
            OK
        }
        Ok(Completion::Done) => OK,
        Err(Error::Buffer { needed }) => {
            op.len = needed;
            BUFFER
        }
        Err(e) => status_of(&e),
        // Not produced for the ops libhreg sends.
        Ok(Completion::Value(_)) => hreg_status::HREG_ERR_PROTOCOL as c_int,
    };
}

fn first_failure(ops: &[hreg_op]) -> c_int {
    ops.iter()
        .map(|op| op.status)
        .find(|&s| s != OK)
        .unwrap_or(OK)
}

/// One op through the batch path, so single calls and batches behave alike.
///
/// # Safety
/// `c` as for `client`; `op.buf` as for `prepare`.
unsafe fn one(c: *mut hreg_client, op: &mut hreg_op) -> c_int {
    // SAFETY: passed on from the caller.
    match unsafe { client(c) } {
        // SAFETY: passed on from the caller.
        Ok(client) => unsafe { run(client, std::slice::from_mut(op)) },
        Err(status) => status,
    }
}

fn new_op(opcode: hreg_opcode, handle: hreg_handle, buf: *mut c_void, len: usize) -> hreg_op {
    hreg_op {
        opcode: opcode as u32,
        flags: 0,
        handle,
        buf,
        len,
        status: OK,
    }
}

/// Connects to `hregd` and starts a session.
///
/// `socket_path` is a NUL-terminated path, or NULL for the default: `$HREG_SOCKET`
/// if set, else `$XDG_RUNTIME_DIR/hreg.sock`, then `/run/hreg/hreg.sock` (the
/// first that accepts). On success `*out` receives a client the caller owns
/// and frees with `hreg_disconnect`; on failure `*out` is set to NULL. The
/// path string is only read during the call.
///
/// Returns HREG_OK; HREG_ERR_INVALID (`out` NULL); HREG_ERR_CONNECT (no
/// daemon there); HREG_ERR_VERSION (the daemon speaks another protocol
/// version); HREG_ERR_QUOTA (the daemon refuses more sessions);
/// HREG_ERR_PROTOCOL; HREG_ERR_IO.
///
/// Blocks for one round trip to the daemon.
///
/// # Safety
/// `socket_path` is NULL or a valid NUL-terminated string; `out` is NULL or
/// points to writable storage for one pointer.
#[no_mangle]
pub unsafe extern "C" fn hreg_connect(
    socket_path: *const c_char,
    out: *mut *mut hreg_client,
) -> c_int {
    guard(|| {
        if out.is_null() {
            return INVALID;
        }
        // SAFETY: `out` is non-NULL and writable (caller's contract).
        unsafe { out.write(std::ptr::null_mut()) };
        let connected = if socket_path.is_null() {
            Client::connect_default()
        } else {
            // SAFETY: non-NULL and NUL-terminated (caller's contract).
            let bytes = unsafe { CStr::from_ptr(socket_path) }.to_bytes();
            Client::connect(Path::new(std::ffi::OsStr::from_bytes(bytes)))
        };
        match connected {
            Ok(client) => {
                let c = Box::into_raw(Box::new(hreg_client {
                    refs: Mutex::default(),
                    client,
                }));
                // SAFETY: as above.
                unsafe { out.write(c) };
                OK
            }
            Err(e) => status_of(&e),
        }
    })
}

/// Ends the session and frees the client: the daemon drops every reference
/// the session held (DETACHED objects stay). NULL is a no-op.
///
/// No other thread may use `c` during or after this call. In a forked child,
/// disconnecting a client inherited from the parent frees the child's copy
/// and leaves the parent's session alone.
///
/// Does not wait for the daemon (it sends GOODBYE and closes).
///
/// # Safety
/// `c` is NULL or came from `hreg_connect` and was not disconnected before.
#[no_mangle]
pub unsafe extern "C" fn hreg_disconnect(c: *mut hreg_client) {
    guard(|| {
        if !c.is_null() {
            // SAFETY: `c` came from Box::into_raw in hreg_connect and is
            // given back exactly once (caller's contract).
            drop(unsafe { Box::from_raw(c) });
        }
        OK
    });
}

/// Creates an object holding a copy of `data[0..len)` and writes its handle
/// to `*out`.
///
/// `flags`: 0, HREG_SHARED (other users may read it), HREG_DETACHED (it
/// lives until `hreg_remove`; the session gets no reference). Without
/// DETACHED the session holds one reference. `data` may be NULL when `len`
/// is 0 (an empty value); the caller keeps ownership of `data`.
///
/// Returns HREG_OK; HREG_ERR_INVALID (NULL `c` or `out`, NULL `data` with
/// `len` > 0, unknown flags); HREG_ERR_TOO_BIG; HREG_ERR_QUOTA;
/// HREG_ERR_DISCONNECTED; HREG_ERR_PROTOCOL; HREG_ERR_IO. `*out` is written
/// only on success.
///
/// A value of up to 32 bytes is usually *posted*: put in the ring, under a
/// handle the daemon granted this session ahead, without waiting for the
/// daemon. The handle returned resolves at once, here and in any process
/// that receives it, and the insert is applied even if this process dies
/// right after; every failure it could meet is reported here, as for any
/// insert. Otherwise (a larger value, no handle or byte credit left) it
/// blocks until the daemon has answered.
///
/// # Safety
/// `c` is NULL or a live client; `data` is NULL or points to `len` readable
/// bytes; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn hreg_insert(
    c: *mut hreg_client,
    data: *const c_void,
    len: usize,
    flags: u32,
    out: *mut hreg_handle,
) -> c_int {
    guard(|| {
        // SAFETY: passed on from the caller.
        let client = match unsafe { client(c) } {
            Ok(client) => client,
            Err(status) => return status,
        };
        if out.is_null() || hreg_proto::Opcode::Insert.check_flags(flags).is_err() {
            return INVALID;
        }
        // SAFETY: passed on from the caller; the value is only read.
        let value = match unsafe { value(data, len) } {
            Ok(value) => value,
            Err(status) => return status,
        };
        match client.insert(value, flags) {
            Ok(h) => {
                // SAFETY: `out` is non-NULL and writable (caller's contract).
                unsafe { out.write(h.get()) };
                OK
            }
            Err(e) => status_of(&e),
        }
    })
}

/// Copies the value of `h` into `buf` (capacity `cap` bytes) and writes its
/// length to `*len`.
///
/// `buf == NULL` with `cap == 0` is a size probe: HREG_OK with `*len == 0`
/// for an empty value, else HREG_ERR_BUFFER with `*len` = the value's length.
/// The caller owns `buf`; only `*len` bytes of it are written.
///
/// Returns HREG_OK; HREG_ERR_INVALID (NULL `c` or `len`, handle 0, NULL
/// `buf` with `cap` > 0); HREG_ERR_STALE; HREG_ERR_DENIED (another user's
/// unshared object); HREG_ERR_BUFFER (`cap` too small: `*len` says how much
/// is needed); HREG_ERR_DISCONNECTED; HREG_ERR_PROTOCOL; HREG_ERR_IO. On
/// errors other than BUFFER `*len` is untouched.
///
/// Blocks until the daemon has answered.
///
/// # Safety
/// `c` is NULL or a live client; `buf` is NULL or points to `cap` writable
/// bytes; `len` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn hreg_get(
    c: *mut hreg_client,
    h: hreg_handle,
    buf: *mut c_void,
    cap: usize,
    len: *mut usize,
) -> c_int {
    guard(|| {
        // SAFETY: passed on from the caller.
        let client = match unsafe { client(c) } {
            Ok(client) => client,
            Err(status) => return status,
        };
        if len.is_null() {
            return INVALID;
        }
        let h = match handle(h) {
            Ok(h) => h,
            Err(status) => return status,
        };
        // SAFETY: passed on from the caller (`buf` writable for `cap`).
        let buf = match unsafe { buffer(buf, cap, client.max_value_size()) } {
            Ok(buf) => buf,
            Err(status) => return status,
        };
        // Straight to get_into (a local read, most often): no batch to
        // build for one GET.
        let (status, length) = match client.get_into(h, buf) {
            Ok(n) => (OK, n),
            Err(Error::Buffer { needed }) => (BUFFER, needed),
            Err(e) => return status_of(&e),
        };
        // SAFETY: `len` is non-NULL and writable (caller's contract).
        unsafe { len.write(length) };
        status
    })
}

/// Replaces the value of `h` with a copy of `data[0..len)`; readers see the
/// old value or the new one, whole. `data` may be NULL when `len` is 0. The
/// caller keeps ownership of `data`.
///
/// Returns HREG_OK; HREG_ERR_INVALID (NULL `c`, handle 0, NULL `data` with
/// `len` > 0); HREG_ERR_TOO_BIG; HREG_ERR_STALE; HREG_ERR_DENIED (not the
/// owner's uid, nor root); HREG_ERR_QUOTA; HREG_ERR_DISCONNECTED;
/// HREG_ERR_PROTOCOL; HREG_ERR_IO.
///
/// Blocks until the daemon has answered.
///
/// # Safety
/// `c` is NULL or a live client; `data` is NULL or points to `len` readable
/// bytes.
#[no_mangle]
pub unsafe extern "C" fn hreg_replace(
    c: *mut hreg_client,
    h: hreg_handle,
    data: *const c_void,
    len: usize,
) -> c_int {
    let mut op = new_op(hreg_opcode::HREG_OP_REPLACE, h, data.cast_mut(), len);
    // SAFETY: passed on from the caller; REPLACE only reads `data`.
    guard(|| unsafe { one(c, &mut op) })
}

/// Takes one more reference to `h` for this session (needs read access).
///
/// Returns HREG_OK; HREG_ERR_INVALID (NULL `c`, handle 0); HREG_ERR_STALE;
/// HREG_ERR_DENIED (another user's unshared object); HREG_ERR_QUOTA;
/// HREG_ERR_DISCONNECTED; HREG_ERR_PROTOCOL; HREG_ERR_IO.
///
/// When the session holds a reference to `h` already, this is usually
/// posted: answered here (STALE when the object is gone) and applied later;
/// an object removed by another session meanwhile makes it a late failure,
/// which the next `hreg_flush` returns. Otherwise it blocks until the
/// daemon has answered.
///
/// # Safety
/// `c` is NULL or a live client.
#[no_mangle]
pub unsafe extern "C" fn hreg_retain(c: *mut hreg_client, h: hreg_handle) -> c_int {
    guard(|| {
        // SAFETY: passed on from the caller.
        let client = match unsafe { client(c) } {
            Ok(client) => client,
            Err(status) => return status,
        };
        match handle(h) {
            Ok(h) => client.retain(h).map_or_else(|e| status_of(&e), |()| OK),
            Err(status) => status,
        }
    })
}

/// Drops one of this session's references to `h`; the object dies when no
/// session references it (unless DETACHED).
///
/// Returns HREG_OK; HREG_ERR_INVALID (NULL `c`, handle 0); HREG_ERR_STALE;
/// HREG_ERR_NOT_HELD (this session holds no reference, whoever owns the
/// object); HREG_ERR_DISCONNECTED; HREG_ERR_PROTOCOL; HREG_ERR_IO.
///
/// Usually posted: answered here, from this session's own count of its
/// references and a read of the slot, and applied before any later write
/// of this thread and before the next `hreg_flush` returns; until then
/// other processes may still see the object (this client does not). An
/// object removed by another session meanwhile makes it a no-op.
///
/// # Safety
/// `c` is NULL or a live client.
#[no_mangle]
pub unsafe extern "C" fn hreg_release(c: *mut hreg_client, h: hreg_handle) -> c_int {
    guard(|| {
        // SAFETY: passed on from the caller.
        let client = match unsafe { client(c) } {
            Ok(client) => client,
            Err(status) => return status,
        };
        match handle(h) {
            Ok(h) => client.release(h).map_or_else(|e| status_of(&e), |()| OK),
            Err(status) => status,
        }
    })
}

/// Kills the object `h` now, whoever references it (the creator's uid, or
/// root). Afterwards every operation on `h` is HREG_ERR_STALE.
///
/// Returns HREG_OK; HREG_ERR_INVALID (NULL `c`, handle 0); HREG_ERR_STALE;
/// HREG_ERR_DENIED; HREG_ERR_DISCONNECTED; HREG_ERR_PROTOCOL; HREG_ERR_IO.
///
/// Blocks until the daemon has answered.
///
/// # Safety
/// `c` is NULL or a live client.
#[no_mangle]
pub unsafe extern "C" fn hreg_remove(c: *mut hreg_client, h: hreg_handle) -> c_int {
    let mut op = new_op(hreg_opcode::HREG_OP_REMOVE, h, std::ptr::null_mut(), 0);
    // SAFETY: passed on from the caller; the op has no buffer.
    guard(|| unsafe { one(c, &mut op) })
}

/// Runs `n` operations as one batch with one wait.
///
/// Ops run in order, not atomically; a failed op does not stop the rest.
/// Each op gets its own `status`; INSERT writes `handle`, GET writes `len`
/// (the value's length, also on HREG_ERR_BUFFER). `flags` must be 0 on
/// every op but INSERT. Each op's `buf` is owned by the caller and must stay
/// valid for the call; GET buffers that overlap other ops' buffers are
/// allowed (such a batch runs one op at a time). `ops` itself must not
/// overlap any op's buffer.
///
/// Returns HREG_OK only if every op is OK, else the first failed op's
/// status. `n == 0`: HREG_OK. `ops == NULL` with `n > 0`, or NULL `c`:
/// HREG_ERR_INVALID (op statuses untouched). Per op: any status of the
/// corresponding single call; HREG_ERR_INVALID for an unknown opcode.
///
/// Blocks until the daemon has answered every op.
///
/// # Safety
/// `c` is NULL or a live client; `ops` is NULL or points to `n` writable
/// `hreg_op`s whose buffers are as the single calls require.
#[no_mangle]
pub unsafe extern "C" fn hreg_submit(c: *mut hreg_client, ops: *mut hreg_op, n: usize) -> c_int {
    guard(|| {
        // SAFETY: passed on from the caller.
        let client = match unsafe { client(c) } {
            Ok(client) => client,
            Err(status) => return status,
        };
        if n == 0 {
            return OK;
        }
        if ops.is_null() {
            return INVALID;
        }
        // SAFETY: non-NULL, `n` writable ops (caller's contract), not
        // overlapping any op's buffer.
        let ops = unsafe { std::slice::from_raw_parts_mut(ops, n) };
        // SAFETY: passed on from the caller.
        unsafe { run(client, ops) }
    })
}

/// Waits until every write this client posted (insert, release, retain)
/// has been applied by the daemon; from then on another process sees their
/// effects.
///
/// Returns the first late failure of a posted write since the last flush
/// (e.g. HREG_ERR_STALE for a retain of an object removed meanwhile), else
/// HREG_OK; HREG_ERR_INVALID (NULL `c`); HREG_ERR_DISCONNECTED (the daemon
/// is gone).
///
/// # Safety
/// `c` is NULL or a live client.
#[no_mangle]
pub unsafe extern "C" fn hreg_flush(c: *mut hreg_client) -> c_int {
    guard(|| {
        // SAFETY: passed on from the caller.
        match unsafe { client(c) } {
            Ok(client) => client.flush().map_or_else(|e| status_of(&e), |()| OK),
            Err(status) => status,
        }
    })
}

/// Writes the registry's figures to `*out` (live objects, value bytes,
/// attached sessions, data-path requests served; `reserved` zeroed).
///
/// Returns HREG_OK; HREG_ERR_INVALID (NULL `c` or `out`);
/// HREG_ERR_DISCONNECTED; HREG_ERR_PROTOCOL; HREG_ERR_IO. `*out` is written
/// only on success.
///
/// Blocks for one round trip to the daemon over the control socket.
///
/// # Safety
/// `c` is NULL or a live client; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn hreg_stats_get(c: *mut hreg_client, out: *mut hreg_stats) -> c_int {
    guard(|| {
        // SAFETY: passed on from the caller.
        let client = match unsafe { client(c) } {
            Ok(client) => client,
            Err(status) => return status,
        };
        if out.is_null() {
            return INVALID;
        }
        match client.stats() {
            Ok(s) => {
                let stats = hreg_stats {
                    objects: s.objects,
                    value_bytes: s.value_bytes,
                    sessions: s.sessions,
                    ops: s.ops,
                    reserved: [0; 4],
                };
                // SAFETY: non-NULL and writable (caller's contract).
                unsafe { out.write(stats) };
                OK
            }
            Err(e) => status_of(&e),
        }
    })
}

/// Borrows the value of `h` without copying it: `*data` points at the value
/// in read-only shared memory (or, for a short value, at a private copy) and
/// stays valid, with the same bytes, until `hreg_ref_release(c, *ref)`, even
/// if the object is replaced or removed meanwhile. Do not write through it.
/// `*len` is the value's length (`*data` may be any non-NULL pointer when it
/// is 0). Any thread of `c` may release the reference; `hreg_disconnect`
/// releases all of them.
///
/// Returns HREG_OK; HREG_ERR_INVALID (NULL `c`, `data`, `len` or `ref`,
/// handle 0); HREG_ERR_STALE; HREG_ERR_DENIED (another user's unshared
/// object); HREG_ERR_QUOTA (1024 references already open on `c`, or the
/// values over 4 KiB borrowed would pass the session's byte budget, its
/// uid's byte quota shared by as many sessions as a uid may have);
/// HREG_ERR_DISCONNECTED; HREG_ERR_PROTOCOL; HREG_ERR_IO. `*data`, `*len`
/// and `*ref` are written only on success.
///
/// Does not block when the value can be read in this process (the usual
/// case); else waits for the daemon, as `hreg_get` does.
///
/// # Safety
/// `c` is NULL or a live client; `data`, `len` and `ref` are NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn hreg_get_ref(
    c: *mut hreg_client,
    h: hreg_handle,
    data: *mut *const c_void,
    len: *mut usize,
    r#ref: *mut u64,
) -> c_int {
    guard(|| {
        // SAFETY: passed on from the caller.
        let whole = match unsafe { whole_client(c) } {
            Ok(whole) => whole,
            Err(status) => return status,
        };
        if data.is_null() || len.is_null() || r#ref.is_null() {
            return INVALID;
        }
        let h = match handle(h) {
            Ok(h) => h,
            Err(status) => return status,
        };
        // Borrowed before the table is checked: STALE and DENIED come
        // before QUOTA.
        let value = match whole.client.get_ref_owned(h) {
            Ok(value) => value,
            Err(e) => return status_of(&e),
        };
        let mut refs = lock(&whole.refs);
        if refs.open.len() >= MAX_REFS {
            return QUOTA;
        }
        refs.last += 1;
        let token = refs.last;
        let (start, length) = (value.as_ptr(), value.len());
        refs.open.insert(token, value);
        // SAFETY: all three are non-NULL and writable (caller's contract).
        unsafe {
            data.write(start.cast());
            len.write(length);
            r#ref.write(token);
        }
        OK
    })
}

/// Releases a reference `hreg_get_ref` gave: its `data` pointer must not be
/// used any more.
///
/// Returns HREG_OK; HREG_ERR_INVALID (NULL `c`; `ref` unknown to `c` or
/// already released). Does not block.
///
/// # Safety
/// `c` is NULL or a live client.
#[no_mangle]
pub unsafe extern "C" fn hreg_ref_release(c: *mut hreg_client, r#ref: u64) -> c_int {
    guard(|| {
        // SAFETY: passed on from the caller.
        let whole = match unsafe { whole_client(c) } {
            Ok(whole) => whole,
            Err(status) => return status,
        };
        let released = lock(&whole.refs).open.remove(&r#ref);
        match released {
            Some(value) => {
                drop(value);
                OK
            }
            None => INVALID,
        }
    })
}

/// What the last call of this thread that failed said about why, in one
/// line: for QUOTA the limit that would have been passed, for CONNECT the
/// socket paths tried, for PROTOCOL what the daemon did; else the status's
/// text. An empty string before any failure. The string belongs to the
/// library and stays valid until this thread's next libhreg call; never
/// NULL. Does not block.
#[no_mangle]
pub extern "C" fn hreg_last_error() -> *const c_char {
    static EMPTY: &CStr = c"";
    catch_unwind(|| {
        LAST_ERROR
            .try_with(|last| last.borrow().1.as_ptr())
            .unwrap_or(EMPTY.as_ptr())
    })
    .unwrap_or(EMPTY.as_ptr())
}

/// A short English description of `status`: a static NUL-terminated string
/// the caller must not free, for every status and a generic one for any
/// other value. Never NULL. Does not block.
#[no_mangle]
pub extern "C" fn hreg_strerror(status: c_int) -> *const c_char {
    static MESSAGES: OnceLock<Vec<CString>> = OnceLock::new();
    const UNKNOWN: &CStr = c"unknown hreg status";
    let found = catch_unwind(|| {
        let messages = MESSAGES.get_or_init(|| {
            Status::ALL
                .iter()
                .map(|s| CString::new(s.message()).unwrap_or_default())
                .collect()
        });
        let index = usize::try_from(status).ok()?;
        messages.get(index).map(|m| m.as_ptr())
    });
    found.ok().flatten().unwrap_or(UNKNOWN.as_ptr())
}

/// The library's version, e.g. "0.1.0": a static NUL-terminated string the
/// caller must not free. Does not block.
#[no_mangle]
pub extern "C" fn hreg_version() -> *const c_char {
    const VERSION: &CStr =
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(v) => v,
            Err(_) => panic!("the package version contains a NUL byte"),
        };
    VERSION.as_ptr()
}

// ---- For language bindings ----------------------------------------------
//
// Not part of the C API contract: what a binding that resolves handles in
// its own runtime needs (the Go client reads slots with its own atomics and
// so saves a cgo call per get). C programs call hreg_get.

/// For language bindings only (the Go client), not for C programs: the
/// registry's shared-memory layout as this libhreg reads it (see
/// `proto/src/table.rs` and `proto/src/handle.rs`, where it is defined). A
/// binding compares it with its own copy and reads slots itself only when
/// they agree.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct hreg_bind_layout {
    /// The layout's version (the registry header's).
    pub version: u32,
    /// Bytes of the registry header.
    pub header_len: u32,
    /// Offset in the header of the word that is non-zero once the daemon
    /// stopped serving.
    pub header_stopped_at: u32,
    /// Bytes of a slot.
    pub slot_size: u32,
    /// Longest value kept inside its slot.
    pub inline_value: u32,
    /// Slots of a domain's first slot chunk; chunk k holds this many << k.
    pub first_slot_chunk: u32,
    /// Slot chunks a domain may have.
    pub max_slot_chunks: u32,
    /// Heap chunks a domain may have.
    pub max_heap_chunks: u32,
    /// Slot word 0: where the generation starts (16 bits).
    pub generation_shift: u32,
    /// Slot word 0: where the state starts (8 bits).
    pub state_shift: u32,
    /// The slot word with the value's length in its low 32 bits.
    pub len_word: u32,
    /// The slot word with the heap address, or the value's first word.
    pub value_word: u32,
    /// Bits of a heap address that hold the offset (above: the chunk).
    pub heap_offset_bits: u32,
    /// Slot states.
    pub state_free: u32,
    /// The value is in the slot.
    pub state_inline: u32,
    /// The value is in the heap.
    pub state_heap: u32,
    /// No object yet: the slot is reserved for a session's posted insert
    /// (a handle granted ahead).
    pub state_reserved: u32,
    /// Handle fields, from the low bits up: slot, generation, domain,
    /// instance.
    pub slot_bits: u32,
    /// Width of the handle's generation.
    pub generation_bits: u32,
    /// Width of the handle's domain.
    pub domain_bits: u32,
    /// Width of the handle's instance bits.
    pub instance_bits: u32,
}

/// For language bindings only: one chunk of shared memory this client
/// mapped read-only (NULL `base`: not mapped).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct hreg_bind_chunk {
    /// The chunk's first byte.
    pub base: *const c_void,
    /// Bytes mapped.
    pub len: usize,
}

/// For language bindings only: where a client's registry mappings are.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct hreg_bind_reads_info {
    /// The registry header (`header_len` bytes of `hreg_bind_layout`).
    pub header: *const c_void,
    /// Moves on (read it with an atomic acquire load) after the client maps
    /// chunks: call `hreg_bind_reads_domain` again when it changed.
    pub counter: *const u64,
    /// The instance bits of this registry's handles.
    pub instance: u32,
    /// `releases_pending_len` counters (a power of two), one per bucket of
    /// handles; handle h's is `releases_pending[(h ^ (h >> 24)) &
    /// (releases_pending_len - 1)]`. It is nonzero (read it with an atomic
    /// acquire load, before the slot) while this client may have posted a
    /// release of its last reference to h that the daemon has not applied:
    /// then resolve h with `hreg_get`, which waits for it. While it is zero
    /// the slot shows every release of h this client made.
    pub releases_pending: *const u32,
    /// How many counters `releases_pending` has.
    pub releases_pending_len: usize,
}

/// For language bindings only: a client's registry mappings, kept mapped
/// until `hreg_bind_reads_free` (even after `hreg_disconnect`).
pub struct hreg_bind_reads {
    reads: hreg_rs::MappedReads,
}

/// For language bindings only: writes the registry layout this libhreg
/// reads to `*out`. Returns HREG_OK, or HREG_ERR_INVALID for NULL `out`.
///
/// # Safety
/// `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn hreg_bind_layout_get(out: *mut hreg_bind_layout) -> c_int {
    use hreg_proto::handle as hd;
    use hreg_proto::table as t;
    guard(|| {
        if out.is_null() {
            return INVALID;
        }
        let layout = hreg_bind_layout {
            version: t::header::VERSION,
            header_len: t::header::LEN as u32,
            header_stopped_at: t::header::STOPPED_AT as u32,
            slot_size: t::SLOT_SIZE as u32,
            inline_value: t::INLINE_VALUE as u32,
            first_slot_chunk: t::FIRST_SLOT_CHUNK,
            max_slot_chunks: t::MAX_SLOT_CHUNKS as u32,
            max_heap_chunks: t::MAX_HEAP_CHUNKS as u32,
            generation_shift: t::GENERATION_SHIFT,
            state_shift: t::STATE_SHIFT,
            len_word: t::LEN_WORD as u32,
            value_word: t::VALUE_WORD as u32,
            heap_offset_bits: t::OFFSET_BITS,
            state_free: t::STATE_FREE as u32,
            state_inline: t::STATE_INLINE as u32,
            state_heap: t::STATE_HEAP as u32,
            state_reserved: t::STATE_RESERVED as u32,
            slot_bits: hd::SLOT_BITS,
            generation_bits: hd::GENERATION_BITS,
            domain_bits: hd::DOMAIN_BITS,
            instance_bits: hd::INSTANCE_BITS,
        };
        // SAFETY: non-NULL and writable (caller's contract).
        unsafe { out.write(layout) };
        OK
    })
}

/// For language bindings only: the registry mappings of `c`, in `*out`
/// (free with `hreg_bind_reads_free`), and where they are, in `*info`.
/// Returns HREG_OK, HREG_ERR_INVALID (a NULL argument), or
/// HREG_ERR_PROTOCOL (no header mapped).
///
/// # Safety
/// `c` is NULL or a live client; `out` and `info` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn hreg_bind_reads_open(
    c: *mut hreg_client,
    out: *mut *mut hreg_bind_reads,
    info: *mut hreg_bind_reads_info,
) -> c_int {
    guard(|| {
        // SAFETY: passed on from the caller.
        let client = match unsafe { client(c) } {
            Ok(client) => client,
            Err(status) => return status,
        };
        if out.is_null() || info.is_null() {
            return INVALID;
        }
        let reads = client.mapped_reads();
        let Some(header) = reads.header() else {
            return hreg_status::HREG_ERR_PROTOCOL as c_int;
        };
        let pending = reads.releases_pending();
        let found = hreg_bind_reads_info {
            header: header.base.cast(),
            counter: reads.counter().as_ptr().cast_const(),
            instance: client.welcome().instance,
            releases_pending: pending.as_ptr().cast(),
            releases_pending_len: pending.len(),
        };
        // SAFETY: both non-NULL and writable (caller's contract).
        unsafe {
            info.write(found);
            out.write(Box::into_raw(Box::new(hreg_bind_reads { reads })));
        }
        OK
    })
}

/// For language bindings only: the chunks of `domain` mapped now, slot
/// chunk k in `slots[k]` (for k < `slots_cap`) and heap chunk k in
/// `heap[k]` (for k < `heap_cap`), NULL `base` where not mapped;
/// `*slots_n` and `*heap_n` say how many entries hold every mapped chunk
/// (more than the cap: call again with more room). Returns HREG_OK or
/// HREG_ERR_INVALID (NULL `r`, `slots_n` or `heap_n`; NULL arrays with a
/// cap; a domain beyond the handle's field).
///
/// # Safety
/// `r` is NULL or came from `hreg_bind_reads_open` and was not freed;
/// `slots` and `heap` are NULL or point to `slots_cap` and `heap_cap`
/// writable entries; `slots_n` and `heap_n` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn hreg_bind_reads_domain(
    r: *const hreg_bind_reads,
    domain: u32,
    slots: *mut hreg_bind_chunk,
    slots_cap: usize,
    slots_n: *mut usize,
    heap: *mut hreg_bind_chunk,
    heap_cap: usize,
    heap_n: *mut usize,
) -> c_int {
    guard(|| {
        // SAFETY: NULL or live (caller's contract); only read.
        let Some(r) = (unsafe { r.as_ref() }) else {
            return INVALID;
        };
        let Some(domain) = u16::try_from(domain)
            .ok()
            .filter(|&d| d <= hreg_proto::handle::DOMAIN_MASK)
        else {
            return INVALID;
        };
        if slots_n.is_null() || heap_n.is_null() {
            return INVALID;
        }
        let (slots_cap, heap_cap) = (
            slots_cap.min(hreg_proto::table::MAX_SLOT_CHUNKS),
            heap_cap.min(hreg_proto::table::MAX_HEAP_CHUNKS),
        );
        if (slots.is_null() && slots_cap > 0) || (heap.is_null() && heap_cap > 0) {
            return INVALID;
        }
        let mut found_slots = vec![None; slots_cap];
        let mut found_heap = vec![None; heap_cap];
        let (ns, nh) = r.reads.domain(domain, &mut found_slots, &mut found_heap);
        let chunk = |c: Option<hreg_rs::MappedChunk>| match c {
            Some(c) => hreg_bind_chunk {
                base: c.base.cast(),
                len: c.len,
            },
            None => hreg_bind_chunk {
                base: std::ptr::null(),
                len: 0,
            },
        };
        // SAFETY: each array is non-NULL when its cap is non-zero and holds
        // at least that many writable entries; the counts are writable
        // (caller's contract).
        unsafe {
            for (k, c) in found_slots.into_iter().enumerate() {
                slots.add(k).write(chunk(c));
            }
            for (k, c) in found_heap.into_iter().enumerate() {
                heap.add(k).write(chunk(c));
            }
            slots_n.write(ns);
            heap_n.write(nh);
        }
        OK
    })
}

/// For language bindings only: frees what `hreg_bind_reads_open` gave (and
/// with it, once the client is disconnected too, the mappings). NULL is a
/// no-op.
///
/// # Safety
/// `r` is NULL or came from `hreg_bind_reads_open` and was not freed; no
/// one reads the mappings during or after this call.
#[no_mangle]
pub unsafe extern "C" fn hreg_bind_reads_free(r: *mut hreg_bind_reads) {
    guard(|| {
        if !r.is_null() {
            // SAFETY: from Box::into_raw in hreg_bind_reads_open, given
            // back once (caller's contract).
            drop(unsafe { Box::from_raw(r) });
        }
        OK
    });
}

/// For language bindings only (runtimes that run calls on ever-changing OS
/// threads, like Go's): makes `c` share a pool of at most `rings` rings (1
/// to 64) among all threads instead of opening one per thread. Call it
/// before any other call on `c`. Returns HREG_OK, or HREG_ERR_INVALID
/// (NULL `c`, `rings` out of range, or a pool already set).
///
/// # Safety
/// `c` is NULL or a live client.
#[no_mangle]
pub unsafe extern "C" fn hreg_bind_ring_pool(c: *mut hreg_client, rings: usize) -> c_int {
    guard(|| {
        // SAFETY: passed on from the caller.
        match unsafe { client(c) } {
            Ok(client) if client.use_ring_pool(rings) => OK,
            Ok(_) => INVALID,
            Err(status) => status,
        }
    })
}

/// For language bindings only: HREG_OK while `c` is attached, else
/// HREG_ERR_DISCONNECTED (the daemon went away or is being resumed), as
/// seen now without waiting (a look at the control socket); HREG_ERR_INVALID
/// for NULL `c`.
///
/// # Safety
/// `c` is NULL or a live client.
#[no_mangle]
pub unsafe extern "C" fn hreg_bind_alive(c: *mut hreg_client) -> c_int {
    guard(|| {
        // SAFETY: passed on from the caller.
        match unsafe { client(c) } {
            Ok(client) if client.is_disconnected() => hreg_status::HREG_ERR_DISCONNECTED as c_int,
            Ok(_) => OK,
            Err(status) => status,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(opcode: u32, buf: usize, len: usize) -> hreg_op {
        hreg_op {
            opcode,
            flags: 0,
            handle: 1,
            buf: buf as *mut c_void,
            len,
            status: 0,
        }
    }

    #[test]
    fn overlapping_buffers_are_found() {
        let (get, insert) = (2, 1);
        assert!(!buffers_overlap(&[op(get, 100, 10), op(get, 110, 10)]));
        assert!(buffers_overlap(&[op(get, 100, 10), op(get, 109, 10)]));
        assert!(buffers_overlap(&[op(insert, 100, 10), op(get, 105, 1)]));
        assert!(buffers_overlap(&[op(get, 100, 100), op(insert, 150, 1)]));
        // Values only read may share memory; ops without buffers don't count.
        assert!(!buffers_overlap(&[
            op(insert, 100, 10),
            op(insert, 100, 10)
        ]));
        assert!(!buffers_overlap(&[op(get, 100, 10), op(4, 100, 10)]));
        assert!(buffers_overlap(&[
            op(get, 100, 50),
            op(insert, 120, 1),
            op(insert, 10, 500),
        ]));
    }

    #[test]
    fn strerror_covers_every_status() {
        for s in Status::ALL {
            // SAFETY: hreg_strerror returns a static NUL-terminated string.
            let text = unsafe { CStr::from_ptr(hreg_strerror(s as c_int)) };
            assert_eq!(text.to_str().unwrap(), s.message());
        }
        for odd in [-1, 13, c_int::MAX, c_int::MIN] {
            // SAFETY: as above.
            let text = unsafe { CStr::from_ptr(hreg_strerror(odd)) };
            assert_eq!(text, c"unknown hreg status");
        }
    }

    #[test]
    fn binding_calls_check_their_arguments() {
        use std::ptr::{null, null_mut};
        // SAFETY: NULL arguments only; every function refuses them.
        unsafe {
            assert_eq!(hreg_bind_layout_get(null_mut()), INVALID);
            assert_eq!(
                hreg_bind_reads_open(null_mut(), null_mut(), null_mut()),
                INVALID
            );
            let (mut ns, mut nh) = (0, 0);
            assert_eq!(
                hreg_bind_reads_domain(null(), 0, null_mut(), 0, &mut ns, null_mut(), 0, &mut nh),
                INVALID
            );
            assert_eq!(hreg_bind_ring_pool(null_mut(), 2), INVALID);
            assert_eq!(hreg_bind_alive(null_mut()), INVALID);
            hreg_bind_reads_free(null_mut());
        }
        let mut layout = hreg_bind_layout::default();
        // SAFETY: a writable layout.
        assert_eq!(unsafe { hreg_bind_layout_get(&mut layout) }, OK);
        assert_eq!(layout.slot_size as usize, hreg_proto::table::SLOT_SIZE);
        assert_eq!(layout.version, hreg_proto::table::header::VERSION);
        assert_eq!(
            layout.slot_bits + layout.generation_bits + layout.domain_bits + layout.instance_bits,
            64
        );
    }

    #[test]
    fn version_is_the_crate_version() {
        // SAFETY: hreg_version returns a static NUL-terminated string.
        let v = unsafe { CStr::from_ptr(hreg_version()) };
        assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    }
}
