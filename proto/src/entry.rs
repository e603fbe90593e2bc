//! The 64-byte ring entries: submission (client → daemon) and completion
//! (daemon → client), as plain structs with byte-exact encoding.
//!
//! All integers are little-endian. The daemon decodes a copy of the bytes it
//! took out of shared memory, so decoding never fails: checking what the
//! fields mean is the daemon's job ([`Sqe::opcode`] is a raw byte on purpose).

use crate::handle::Handle;

/// Size of every ring entry in bytes.
pub const ENTRY_SIZE: usize = 64;

/// Bytes of value that fit inside an entry.
pub const INLINE_CAPACITY: usize = 32;

/// Offset of the inline bytes within an entry.
const INLINE_OFFSET: usize = 32;

/// Submission-entry flags (`Sqe::entry_flags`).
pub mod sqe_flags {
    /// The value is inline in the entry (`data_len` bytes of `inline`).
    pub const INLINE: u8 = 0x1;
    /// The value is the ring's staging buffer (built by STAGE_WRITE).
    pub const STAGED: u8 = 0x2;
    /// A posted write (INSERT into a granted handle, RETAIN, RELEASE): the
    /// client did not wait for it, so it is completed only if it fails (a
    /// late failure, which the client's next flush returns).
    pub const POSTED: u8 = 0x4;
    /// Every defined flag.
    pub const ALL: u8 = INLINE | STAGED | POSTED;
}

/// Completion-entry flags (`Cqe::entry_flags`).
pub mod cqe_flags {
    /// The value is inline in the completion.
    pub const INLINE: u16 = 0x1;
    /// The value was written to the data area at `data_off`.
    pub const IN_DATA: u16 = 0x2;
    /// The value was too large for the region given and waits in the ring's
    /// staging buffer; fetch it with STAGE_READ.
    pub const STAGED: u16 = 0x4;
    /// With STALE: the handle is granted ahead to a session whose insert
    /// is not applied yet (it may have returned in another process): ask
    /// again shortly, and take STALE only after a bounded wait.
    pub const RESERVED: u16 = 0x8;
    /// On RESERVE's completion: the daemon applies posted writes, so the
    /// session may post (absent: write synchronously; a daemon that keeps
    /// its state across restarts grants nothing yet).
    pub const POSTING: u16 = 0x10;
}

/// A submission entry.
///
/// | bytes  | field         | meaning |
/// |--------|---------------|---------|
/// | 0..8   | `user_data`   | echoed in the completion |
/// | 8      | `opcode`      | [`crate::Opcode`] |
/// | 9      | `entry_flags` | [`sqe_flags`] |
/// | 10..12 | `stamp`       | set by the ring when the entry is published (see [`crate::ring`]) |
/// | 12..16 | `obj_flags`   | INSERT's object flags; zero otherwise |
/// | 16..24 | `handle`      | target handle |
/// | 24..28 | `data_off`    | offset in the ring's data area |
/// | 28..32 | `data_len`    | value length (in), or region capacity (GET, STAGE_READ) |
/// | 32..64 | `inline`      | inline value; for GET the caller's buffer capacity (u64 at 32); for STAGE_* the staging offset (u64 at 32) |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sqe {
    /// The client's tag for the request, echoed in its completion.
    pub user_data: u64,
    /// A [`crate::Opcode`] number, kept raw: the daemon checks it.
    pub opcode: u8,
    /// [`sqe_flags`]: where the value of INSERT or REPLACE is.
    pub entry_flags: u8,
    /// The lap stamp that publishes the entry; written by [`crate::ring`].
    pub stamp: u16,
    /// INSERT's object flags ([`crate::flags`]); 0 for every other opcode.
    pub obj_flags: u32,
    /// The target handle; unused by INSERT and STAGE_*.
    pub handle: u64,
    /// Offset in the ring's data area of the value or of the output region.
    pub data_off: u32,
    /// The value's length (INSERT, REPLACE, STAGE_WRITE) or the output
    /// region's size (GET, STAGE_READ), in bytes.
    pub data_len: u32,
    /// An INLINE value; for GET the caller's buffer capacity, for STAGE_*
    /// the staging offset (a `u64` in the first 8 bytes).
    pub inline: [u8; INLINE_CAPACITY],
}

impl Default for Sqe {
    fn default() -> Self {
        Sqe {
            user_data: 0,
            opcode: 0,
            entry_flags: 0,
            stamp: 0,
            obj_flags: 0,
            handle: 0,
            data_off: 0,
            data_len: 0,
            inline: [0; INLINE_CAPACITY],
        }
    }
}

impl Sqe {
    /// The entry's 64 bytes.
    #[inline]
    pub fn encode(&self) -> [u8; ENTRY_SIZE] {
        let mut b = [0u8; ENTRY_SIZE];
        b[0..8].copy_from_slice(&self.user_data.to_le_bytes());
        b[8] = self.opcode;
        b[9] = self.entry_flags;
        b[10..12].copy_from_slice(&self.stamp.to_le_bytes());
        b[12..16].copy_from_slice(&self.obj_flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.handle.to_le_bytes());
        b[24..28].copy_from_slice(&self.data_off.to_le_bytes());
        b[28..32].copy_from_slice(&self.data_len.to_le_bytes());
        b[INLINE_OFFSET..].copy_from_slice(&self.inline);
        b
    }

    /// The entry in these 64 bytes, whatever they hold.
    #[inline]
    pub fn decode(b: &[u8; ENTRY_SIZE]) -> Sqe {
        Sqe {
            user_data: le_u64(b, 0),
            opcode: b[8],
            entry_flags: b[9],
            stamp: u16::from_le_bytes([b[10], b[11]]),
            obj_flags: le_u32(b, 12),
            handle: Sqe::handle_of(b),
            data_off: le_u32(b, 24),
            data_len: le_u32(b, 28),
            inline: b[INLINE_OFFSET..].try_into().expect("32 bytes"),
        }
    }

    /// The handle field of the entry in these 64 bytes, without decoding
    /// the rest (a look at two entries before parsing either).
    #[inline]
    pub fn handle_of(b: &[u8; ENTRY_SIZE]) -> u64 {
        le_u64(b, 16)
    }

    /// The u64 argument carried in the inline area (GET capacity, staging
    /// offset).
    #[inline]
    pub fn inline_u64(&self) -> u64 {
        u64::from_le_bytes(self.inline[..8].try_into().expect("8 bytes"))
    }

    /// Sets the u64 argument carried in the inline area.
    #[inline]
    pub fn set_inline_u64(&mut self, value: u64) {
        self.inline[..8].copy_from_slice(&value.to_le_bytes());
    }
}

/// A completion entry.
///
/// | bytes  | field         | meaning |
/// |--------|---------------|---------|
/// | 0..8   | `user_data`   | from the submission |
/// | 8..12  | `status`      | [`crate::Status`] |
/// | 12..14 | `entry_flags` | [`cqe_flags`] |
/// | 14..16 | `stamp`       | set by the ring when the completion is published |
/// | 16..24 | `handle`      | INSERT: the new handle |
/// | 24..28 | `value_len`   | GET: the value's length (also on BUFFER); QUOTA: the [`crate::Limit`] code (0: not said) |
/// | 28..32 | `data_off`    | where in the data area the value was written |
/// | 32..64 | `inline`      | inline value |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cqe {
    /// The `user_data` of the submission this completes.
    pub user_data: u64,
    /// A [`crate::Status`] code: OK or a registry status (1 to 7).
    pub status: u32,
    /// [`cqe_flags`]: where a value read by GET or STAGE_READ is.
    pub entry_flags: u16,
    /// The lap stamp that publishes the completion; written by [`crate::ring`].
    pub stamp: u16,
    /// INSERT: the new object's handle; 0 otherwise.
    pub handle: u64,
    /// GET: the value's length (also with BUFFER); STAGE_READ: the bytes
    /// copied; QUOTA: the code of the [`crate::Limit`] that refused (0:
    /// not said).
    pub value_len: u32,
    /// IN_DATA: where in the data area the value was written.
    pub data_off: u32,
    /// An INLINE value (GET of at most [`INLINE_CAPACITY`] bytes).
    pub inline: [u8; INLINE_CAPACITY],
}

impl Default for Cqe {
    fn default() -> Self {
        Cqe {
            user_data: 0,
            status: 0,
            entry_flags: 0,
            stamp: 0,
            handle: 0,
            value_len: 0,
            data_off: 0,
            inline: [0; INLINE_CAPACITY],
        }
    }
}

impl Cqe {
    /// The completion's 64 bytes.
    #[inline]
    pub fn encode(&self) -> [u8; ENTRY_SIZE] {
        let mut b = [0u8; ENTRY_SIZE];
        b[0..8].copy_from_slice(&self.user_data.to_le_bytes());
        b[8..12].copy_from_slice(&self.status.to_le_bytes());
        b[12..14].copy_from_slice(&self.entry_flags.to_le_bytes());
        b[14..16].copy_from_slice(&self.stamp.to_le_bytes());
        b[16..24].copy_from_slice(&self.handle.to_le_bytes());
        b[24..28].copy_from_slice(&self.value_len.to_le_bytes());
        b[28..32].copy_from_slice(&self.data_off.to_le_bytes());
        b[INLINE_OFFSET..].copy_from_slice(&self.inline);
        b
    }

    /// The completion in these 64 bytes, whatever they hold.
    #[inline]
    pub fn decode(b: &[u8; ENTRY_SIZE]) -> Cqe {
        Cqe {
            user_data: le_u64(b, 0),
            status: le_u32(b, 8),
            entry_flags: u16::from_le_bytes([b[12], b[13]]),
            stamp: u16::from_le_bytes([b[14], b[15]]),
            handle: le_u64(b, 16),
            value_len: le_u32(b, 24),
            data_off: le_u32(b, 28),
            inline: b[INLINE_OFFSET..].try_into().expect("32 bytes"),
        }
    }
}

#[inline]
fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[inline]
fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn sqe_round_trips(user_data: u64, opcode: u8, entry_flags: u8, stamp: u16, obj_flags: u32,
                           handle: u64, data_off: u32, data_len: u32, inline: [u8; 32]) {
            let sqe = Sqe { user_data, opcode, entry_flags, stamp, obj_flags, handle, data_off, data_len, inline };
            prop_assert_eq!(Sqe::decode(&sqe.encode()), sqe);
        }

        #[test]
        fn cqe_round_trips(user_data: u64, status: u32, entry_flags: u16, stamp: u16, handle: u64,
                           value_len: u32, data_off: u32, inline: [u8; 32]) {
            let cqe = Cqe { user_data, status, entry_flags, stamp, handle, value_len, data_off, inline };
            prop_assert_eq!(Cqe::decode(&cqe.encode()), cqe);
        }
    }
}

/// Where the value of an INSERT or REPLACE is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueSource {
    /// `len` bytes of the entry's inline area.
    Inline {
        /// The value's length, at most [`INLINE_CAPACITY`].
        len: usize,
    },
    /// `len` bytes of the data area at `off` (in bounds).
    Data {
        /// Offset of the value in the data area.
        off: u32,
        /// The value's length.
        len: usize,
    },
    /// The ring's staging buffer, which must hold exactly `len` bytes.
    Staged {
        /// The value's length, as the entry gives it.
        len: usize,
    },
}

impl ValueSource {
    /// The value's length in bytes.
    pub fn len(&self) -> usize {
        match *self {
            ValueSource::Inline { len }
            | ValueSource::Data { len, .. }
            | ValueSource::Staged { len } => len,
        }
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A submission entry that passed every check that needs no registry: known
/// opcode and flags, non-zero handle where one is
/// needed, and data ranges inside the data area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingRequest {
    /// Create an object.
    Insert {
        /// Its object flags, within [`crate::flags::ALL`].
        flags: u32,
        /// Where its value is.
        value: ValueSource,
        /// The handle granted ahead that names it (the entry's handle, when
        /// not 0; required for a posted insert), else the daemon picks one.
        into: Option<Handle>,
    },
    /// Read a value.
    Get {
        /// The object to read.
        handle: Handle,
        /// Offset in the data area of the region a value too large to go
        /// inline is written to.
        region_off: u32,
        /// Bytes in that region (inside the data area); a larger value is
        /// staged.
        region_len: usize,
        /// The caller's buffer capacity: a longer value gets BUFFER.
        capacity: u64,
    },
    /// Replace a value.
    Replace {
        /// The object whose value changes.
        handle: Handle,
        /// Where the new value is.
        value: ValueSource,
    },
    /// One more reference for the session.
    Retain {
        /// The object to reference.
        handle: Handle,
    },
    /// Drop one of the session's references.
    Release {
        /// The object referenced.
        handle: Handle,
    },
    /// Kill an object now.
    Remove {
        /// The object to kill.
        handle: Handle,
    },
    /// Copy a piece of a value into the ring's staging buffer.
    StageWrite {
        /// Where the piece goes in the staging buffer; the daemon refuses
        /// one past the staging length.
        offset: u64,
        /// Where the piece is in the data area.
        data_off: u32,
        /// The piece's length (inside the data area).
        len: usize,
    },
    /// Copy a piece of the staging buffer out to the data area.
    StageRead {
        /// Where in the staging buffer the piece starts.
        offset: u64,
        /// Where in the data area it goes.
        data_off: u32,
        /// Most bytes to copy: the size of the region at `data_off`.
        len: usize,
    },
    /// Grant the session handles ahead and a byte credit.
    Reserve {
        /// Handles of the SHARED domain, else of the uid's own.
        shared: bool,
        /// Where in the data area the granted handles are written (`u64`
        /// each, little-endian).
        region_off: u32,
        /// Most handles wanted: the region's size / 8, at most
        /// [`MAX_GRANT`].
        want: usize,
    },
    /// Complete once every earlier entry of the ring is applied, giving
    /// back up to `give_back` bytes of the session's byte credit (the
    /// entry's first inline `u64`; 0: none), for a client that met a byte
    /// limit with credit unspent.
    Sync {
        /// Bytes of credit given back.
        give_back: u64,
    },
}

/// Most handles one RESERVE may grant.
pub const MAX_GRANT: usize = 256;

impl RingRequest {
    /// Parses the bytes of a submission entry for a ring whose data area
    /// holds `data_size` bytes. Fails with [`crate::Status::Invalid`] for anything
    /// malformed. Never panics, whatever the bytes.
    #[inline]
    pub fn parse(raw: &[u8; ENTRY_SIZE], data_size: u32) -> Result<RingRequest, crate::Status> {
        RingRequest::from_sqe(&Sqe::decode(raw), data_size)
    }

    /// [`RingRequest::parse`] for an entry already decoded.
    #[inline]
    pub fn from_sqe(sqe: &Sqe, data_size: u32) -> Result<RingRequest, crate::Status> {
        use crate::{Opcode, Status};
        let invalid = Err(Status::Invalid);
        if sqe.entry_flags & !sqe_flags::ALL != 0 {
            return invalid;
        }
        let Some(opcode) = Opcode::from_u8(sqe.opcode) else {
            return invalid;
        };
        opcode.check_flags(sqe.obj_flags)?;
        let posted = sqe.entry_flags & sqe_flags::POSTED != 0;
        if posted && !matches!(opcode, Opcode::Insert | Opcode::Retain | Opcode::Release) {
            return invalid;
        }
        let placement = sqe.entry_flags & !sqe_flags::POSTED;
        let in_data = |off: u32, len: usize| {
            (off as usize)
                .checked_add(len)
                .is_some_and(|end| end <= data_size as usize)
        };
        let len = sqe.data_len as usize;
        let value = || match placement {
            sqe_flags::INLINE if len <= INLINE_CAPACITY => Ok(ValueSource::Inline { len }),
            sqe_flags::STAGED => Ok(ValueSource::Staged { len }),
            0 if in_data(sqe.data_off, len) => Ok(ValueSource::Data {
                off: sqe.data_off,
                len,
            }),
            _ => Err(Status::Invalid),
        };
        let handle = || Handle::new(sqe.handle).ok_or(Status::Invalid);
        let plain_range = || {
            if placement == 0 && in_data(sqe.data_off, len) {
                Ok(())
            } else {
                Err(Status::Invalid)
            }
        };
        Ok(match opcode {
            Opcode::Insert => {
                let into = Handle::new(sqe.handle);
                if posted && into.is_none() {
                    return invalid;
                }
                RingRequest::Insert {
                    flags: sqe.obj_flags,
                    value: value()?,
                    into,
                }
            }
            Opcode::Replace => RingRequest::Replace {
                handle: handle()?,
                value: value()?,
            },
            Opcode::Get => {
                let handle = handle()?;
                plain_range()?;
                RingRequest::Get {
                    handle,
                    region_off: sqe.data_off,
                    region_len: len,
                    capacity: sqe.inline_u64(),
                }
            }
            Opcode::Retain => RingRequest::Retain { handle: handle()? },
            Opcode::Release => RingRequest::Release { handle: handle()? },
            Opcode::Remove => RingRequest::Remove { handle: handle()? },
            Opcode::StageWrite => {
                plain_range()?;
                RingRequest::StageWrite {
                    offset: sqe.inline_u64(),
                    data_off: sqe.data_off,
                    len,
                }
            }
            Opcode::StageRead => {
                plain_range()?;
                RingRequest::StageRead {
                    offset: sqe.inline_u64(),
                    data_off: sqe.data_off,
                    len,
                }
            }
            Opcode::Reserve => {
                plain_range()?;
                if !len.is_multiple_of(8) || !(8..=8 * MAX_GRANT).contains(&len) {
                    return invalid;
                }
                RingRequest::Reserve {
                    shared: sqe.obj_flags & crate::flags::SHARED != 0,
                    region_off: sqe.data_off,
                    want: len / 8,
                }
            }
            Opcode::Sync => RingRequest::Sync {
                give_back: sqe.inline_u64(),
            },
        })
    }

    /// Whether the entry is a posted write: completed only if it fails.
    /// (Whether its opcode may be posted is checked by
    /// [`RingRequest::from_sqe`].)
    #[inline]
    pub fn is_posted(sqe: &Sqe) -> bool {
        sqe.entry_flags & sqe_flags::POSTED != 0
    }
}

#[cfg(test)]
mod request_tests {
    use super::*;
    use crate::{Opcode, Status};
    use proptest::prelude::*;

    fn entry(opcode: Opcode) -> Sqe {
        Sqe {
            opcode: opcode as u8,
            handle: 7,
            ..Sqe::default()
        }
    }

    #[test]
    fn malformed_entries_are_invalid() {
        let data = 1024;
        let cases = vec![
            Sqe {
                handle: 0,
                ..entry(Opcode::Get)
            },
            Sqe {
                handle: 0,
                ..entry(Opcode::Remove)
            },
            Sqe {
                obj_flags: 4,
                ..entry(Opcode::Insert)
            },
            Sqe {
                obj_flags: 1,
                ..entry(Opcode::Get)
            },
            Sqe {
                entry_flags: 0x80,
                ..entry(Opcode::Insert)
            },
            Sqe {
                entry_flags: sqe_flags::INLINE | sqe_flags::STAGED,
                ..entry(Opcode::Insert)
            },
            Sqe {
                entry_flags: sqe_flags::INLINE,
                data_len: 33,
                ..entry(Opcode::Insert)
            },
            Sqe {
                data_off: 1000,
                data_len: 25,
                ..entry(Opcode::Insert)
            },
            Sqe {
                data_off: u32::MAX,
                data_len: u32::MAX,
                ..entry(Opcode::Get)
            },
            Sqe {
                entry_flags: sqe_flags::INLINE,
                ..entry(Opcode::Get)
            },
            Sqe {
                data_off: 1020,
                data_len: 5,
                ..entry(Opcode::StageRead)
            },
            Sqe {
                opcode: 9,
                ..Sqe::default()
            },
            // Posted: only INSERT (into a granted handle), RETAIN, RELEASE.
            Sqe {
                entry_flags: sqe_flags::POSTED,
                ..entry(Opcode::Replace)
            },
            Sqe {
                entry_flags: sqe_flags::POSTED,
                ..entry(Opcode::Get)
            },
            Sqe {
                entry_flags: sqe_flags::POSTED | sqe_flags::INLINE,
                handle: 0,
                ..entry(Opcode::Insert)
            },
            // RESERVE: a region of whole handles, SHARED its only flag.
            Sqe {
                data_len: 12,
                ..entry(Opcode::Reserve)
            },
            Sqe {
                data_len: 0,
                ..entry(Opcode::Reserve)
            },
            Sqe {
                data_len: 8 * MAX_GRANT as u32 + 8,
                ..entry(Opcode::Reserve)
            },
            Sqe {
                data_len: 8,
                obj_flags: 2,
                ..entry(Opcode::Reserve)
            },
        ]
        .into_iter()
        .map(|sqe| sqe.encode())
        .collect::<Vec<_>>();
        for raw in cases {
            assert_eq!(
                RingRequest::parse(&raw, data),
                Err(Status::Invalid),
                "{:?}",
                Sqe::decode(&raw)
            );
        }
    }

    #[test]
    fn well_formed_entries_parse() {
        let raw = Sqe {
            entry_flags: sqe_flags::INLINE,
            data_len: 32,
            obj_flags: 3,
            ..entry(Opcode::Insert)
        };
        assert_eq!(
            RingRequest::parse(&raw.encode(), 64),
            Ok(RingRequest::Insert {
                flags: 3,
                value: ValueSource::Inline { len: 32 },
                into: Handle::new(7),
            })
        );
        let posted = Sqe {
            entry_flags: sqe_flags::POSTED | sqe_flags::INLINE,
            data_len: 16,
            ..entry(Opcode::Insert)
        };
        assert!(RingRequest::is_posted(&posted));
        assert_eq!(
            RingRequest::from_sqe(&posted, 64),
            Ok(RingRequest::Insert {
                flags: 0,
                value: ValueSource::Inline { len: 16 },
                into: Handle::new(7),
            })
        );
        let release = Sqe {
            entry_flags: sqe_flags::POSTED,
            ..entry(Opcode::Release)
        };
        assert_eq!(
            RingRequest::from_sqe(&release, 64),
            Ok(RingRequest::Release {
                handle: Handle::new(7).unwrap()
            })
        );
        let reserve = Sqe {
            data_off: 8,
            data_len: 48,
            obj_flags: 1,
            ..entry(Opcode::Reserve)
        };
        assert_eq!(
            RingRequest::from_sqe(&reserve, 64),
            Ok(RingRequest::Reserve {
                shared: true,
                region_off: 8,
                want: 6
            })
        );
        assert_eq!(
            RingRequest::from_sqe(&entry(Opcode::Sync), 64),
            Ok(RingRequest::Sync { give_back: 0 })
        );
        let raw = Sqe {
            data_off: 32,
            data_len: 32,
            ..entry(Opcode::Replace)
        };
        assert_eq!(
            RingRequest::parse(&raw.encode(), 64),
            Ok(RingRequest::Replace {
                handle: Handle::new(7).unwrap(),
                value: ValueSource::Data { off: 32, len: 32 }
            })
        );
    }

    proptest! {
        #[test]
        fn any_bytes_parse_without_panic(raw: [u8; 64], data_size: u32) {
            if let Ok(RingRequest::Insert { value: ValueSource::Data { off, len }, .. }) = RingRequest::parse(&raw, data_size) {
                prop_assert!(off as usize + len <= data_size as usize);
            }
        }
    }
}
