//! hreg-proto: the bytes the daemon and its clients agree on.
//!
//! This crate owns the wire format and nothing else: status codes, object flags
//! and opcodes (with the numeric values of the C API), the handle encoding, the
//! 64-byte ring entries, the control-socket messages and the layout of a
//! session's shared memory, and the two sides of the ring protocol over it.
//! Its one piece of I/O is how a control message and its descriptors cross
//! a Unix socket ([`fd_passing`]), which the daemon and clients share; it
//! starts no threads. `unsafe` lives in two modules:
//! [`shm`], which maps shared memory and hands out atomics over it, and
//! [`atomic_copy`], which copies bytes another process may be writing.
//! `PROTOCOL.md` beside this crate describes the same bytes for clients
//! written in other languages.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod atomic_copy;
pub mod control;
pub mod entry;
pub mod fd_passing;
pub mod handle;
pub mod handoff;
pub mod limit;
pub mod locks;
pub mod pins;
pub mod ring;
pub mod shm;
pub mod sync;
pub mod table;

pub use limit::Limit;

/// Version of the protocol spoken over the control socket and the rings.
/// HELLO carries it; the daemon refuses any other. 2: pins name blocks
/// (WELCOME's pin bytes), USAGE_REPLY carries `uid_max_references` and each
/// uid's references, MAP_DOMAIN answers with the chunks asked for, one of
/// each kind at most.
pub const PROTOCOL_VERSION: u32 = 2;

/// Longest client name carried in HELLO, in bytes.
pub const MAX_CLIENT_NAME: usize = 64;

/// Largest value size a daemon may be configured to accept (1 GiB): value
/// lengths travel as `u32` in ring entries.
pub const MAX_VALUE_SIZE_LIMIT: u64 = 1 << 30;

/// Where hregd listens and where clients look for it, in the words
/// `hregd --help`, `hregctl --help` and the README all use (tests compare
/// them, and the code's defaults with them).
pub const SOCKET_LOOKUP: &str = "\
Socket: hregd listens on --socket PATH, else on $HREG_SOCKET, else on
/run/hreg/hreg.sock when run as root and on $XDG_RUNTIME_DIR/hreg.sock
otherwise (under systemd, on the socket systemd passes it). A client given
no path (hregctl without --socket) uses $HREG_SOCKET if set, else tries
$XDG_RUNTIME_DIR/hreg.sock, then /run/hreg/hreg.sock, and takes the first
that accepts.";

/// Status of an operation, with the numeric values of the C API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// A bad argument, wrong on its face: handle 0, an unknown opcode or
    /// flag, a data range outside the data area, object flags on anything
    /// but INSERT (in the C API also NULL where a pointer is needed).
    Invalid = 1,
    /// The handle names no live object: made up, released, removed, or
    /// from an earlier daemon.
    Stale = 2,
    /// Another user's object: not SHARED (to read or retain it), or not the
    /// caller's to replace or remove.
    Denied = 3,
    /// The value is longer than the daemon's maximum value size.
    TooBig = 4,
    /// GET: the caller's buffer is smaller than the value; the completion's
    /// `value_len` says how much is needed.
    Buffer = 5,
    /// A limit on objects, bytes, sessions or rings would be passed
    /// ([`Limit`] says which: in a completion's `value_len`, at the start
    /// of a REFUSED or ERROR text).
    Quota = 6,
    /// RELEASE without a reference held by the session.
    NotHeld = 7,
    /// Client side: no daemon accepted a connection at the socket path.
    Connect = 8,
    /// Client side: the daemon went away (EOF or SHUTDOWN on the control
    /// socket).
    Disconnected = 9,
    /// The client and the daemon speak different protocol versions (also in
    /// REFUSED).
    Version = 10,
    /// The peer broke the protocol: a malformed message or entry (also in
    /// REFUSED and ERROR).
    Protocol = 11,
    /// An operating-system error, on the client's side or (in ERROR) the
    /// daemon's.
    Io = 12,
}

impl Status {
    /// Every status, in numeric order.
    pub const ALL: [Status; 13] = [
        Status::Ok,
        Status::Invalid,
        Status::Stale,
        Status::Denied,
        Status::TooBig,
        Status::Buffer,
        Status::Quota,
        Status::NotHeld,
        Status::Connect,
        Status::Disconnected,
        Status::Version,
        Status::Protocol,
        Status::Io,
    ];

    /// The status with this number, if there is one.
    pub fn from_u32(code: u32) -> Option<Status> {
        Status::ALL.get(code as usize).copied()
    }

    /// A short English description: what `hreg_strerror` returns and Go's
    /// sentinel errors say. Every client words this failure the same way:
    /// this text, or for TOO_BIG, QUOTA and CONNECT the same with what it
    /// knows (the size and the limit, the limit's name, the paths tried).
    pub fn message(self) -> &'static str {
        match self {
            Status::Ok => "success",
            Status::Invalid => "invalid argument",
            Status::Stale => "no such object (removed, or never issued by this daemon)",
            Status::Denied => {
                "access denied (another user's object: not shared, or not yours to change)"
            }
            Status::TooBig => "value too big (over the daemon's max_value_size)",
            Status::Buffer => "buffer too small",
            Status::Quota => "a limit on objects, bytes or sessions would be passed",
            Status::NotHeld => "no reference held on this handle",
            Status::Connect => "cannot connect to hregd",
            Status::Disconnected => "the daemon went away",
            Status::Version => "protocol versions differ",
            Status::Protocol => "the peer broke the protocol",
            Status::Io => "operating-system error",
        }
    }
}

/// An operating-system error's text as words for a message: without
/// Rust's " (os error N)", and "Permission denied" as "permission denied"
/// so that it reads as part of a sentence. The one place every hreg
/// binary and client words OS errors.
pub fn os_error_words(text: &str) -> String {
    let text = match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => &text[..at],
        _ => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first)
            if first.is_uppercase() && chars.clone().next().is_some_and(char::is_lowercase) =>
        {
            first.to_lowercase().chain(chars).collect()
        }
        _ => text.to_owned(),
    }
}

/// Object flags given to INSERT.
pub mod flags {
    /// Other users may read the object.
    pub const SHARED: u32 = 0x1;
    /// The object belongs to the registry, not to a session: it lives until
    /// removed.
    pub const DETACHED: u32 = 0x2;
    /// Every flag an INSERT may carry.
    pub const ALL: u32 = SHARED | DETACHED;
}

/// Opcodes of ring entries. 1 to 6 are the public operations (the values of
/// `enum hreg_opcode`); 16 and up are the ring's own: moving large values in
/// pieces, granting handles ahead, and the barrier of posted writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    /// Create an object from the value; the session gets one reference
    /// unless the object is DETACHED.
    Insert = 1,
    /// Read a value: inline, into the data area, or into the staging buffer
    /// when it is too large for the region given.
    Get = 2,
    /// Replace a value; readers see the old value or the new one, whole.
    Replace = 3,
    /// One more reference for the session (needs read access).
    Retain = 4,
    /// Drop one of the session's references (NOT_HELD when it has none).
    Release = 5,
    /// Kill the object now, whoever references it (the owner's uid or root).
    Remove = 6,
    /// Copy a piece of a value into the ring's staging buffer.
    StageWrite = 16,
    /// Copy a piece of the staging buffer out to the data area.
    StageRead = 17,
    /// Grant the session handles ahead (reserved slots) and a byte credit,
    /// for inserts it posts without waiting.
    Reserve = 18,
    /// Complete once every earlier entry of the ring is applied: the
    /// barrier behind `flush`.
    Sync = 19,
}

impl Opcode {
    /// The opcode with this number, public or staging, if there is one.
    pub fn from_u8(code: u8) -> Option<Opcode> {
        Some(match code {
            1 => Opcode::Insert,
            2 => Opcode::Get,
            3 => Opcode::Replace,
            4 => Opcode::Retain,
            5 => Opcode::Release,
            6 => Opcode::Remove,
            16 => Opcode::StageWrite,
            17 => Opcode::StageRead,
            18 => Opcode::Reserve,
            19 => Opcode::Sync,
            _ => return None,
        })
    }

    /// Checks the object flags an entry of this opcode carries: INSERT may
    /// carry [`flags::ALL`], RESERVE [`flags::SHARED`] (the domain it asks
    /// handles of), every other opcode none (INVALID otherwise).
    #[inline]
    pub fn check_flags(self, obj_flags: u32) -> Result<(), Status> {
        let allowed = match self {
            Opcode::Insert => flags::ALL,
            Opcode::Reserve => flags::SHARED,
            _ => 0,
        };
        if obj_flags & !allowed == 0 {
            Ok(())
        } else {
            Err(Status::Invalid)
        }
    }

    /// The opcode as the public API numbers it (1 to 6), if it is public.
    pub fn from_public(code: u32) -> Option<Opcode> {
        match code {
            1..=6 => Opcode::from_u8(code as u8),
            _ => None,
        }
    }
}
