//! Control-socket messages. Each message is one `SOCK_SEQPACKET` packet: a
//! little-endian `u32` kind followed by the kind's fields, nothing after them.
//! Decoding takes untrusted bytes and returns an error, never panics.

use thiserror::Error;

/// Largest control packet either side sends or accepts, in bytes.
pub const MAX_MESSAGE: usize = 65536;

/// Most entries in one page of SESSIONS or LIST.
pub const MAX_PAGE: u32 = 512;

/// Bytes that open every HELLO, so a stray connection is told apart from a
/// client of another protocol version.
pub const HELLO_MAGIC: [u8; 4] = *b"HREG";

/// Why a packet is not a well-formed message.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The packet ends before its fields do, or an element count promises
    /// more elements than the rest could hold.
    #[error("message too short")]
    Short,
    /// Bytes follow the last field; how many.
    #[error("{0} unexpected bytes after the message")]
    Trailing(usize),
    /// The kind names no message this side accepts.
    #[error("unknown message kind {0}")]
    UnknownKind(u32),
    /// HELLO does not start with [`HELLO_MAGIC`].
    #[error("HELLO does not start with the hreg magic")]
    BadMagic,
    /// A text field is not UTF-8 or longer than its maximum, in bytes.
    #[error("text field is not UTF-8 or longer than {0} bytes")]
    BadText(usize),
    /// A field holds a value it may not; which field.
    #[error("bad value in {0}")]
    BadField(&'static str),
}

/// Messages a client sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlRequest {
    /// First message on a connection.
    Hello {
        /// The protocol the client speaks ([`crate::PROTOCOL_VERSION`]).
        version: u32,
        /// The client's name, for operators; at most
        /// [`crate::MAX_CLIENT_NAME`] bytes.
        name: String,
    },
    /// Ask for a ring for one more client thread.
    RingOpen,
    /// Give a ring back.
    RingClose {
        /// The index RING_OPENED gave.
        index: u32,
    },
    /// Ask for the registry's figures.
    Stats,
    /// End the session.
    Goodbye,
    /// A page of attached sessions, from `cursor` (0 first).
    Sessions {
        /// The lowest session id to show: 0, or the `next` of the page
        /// before.
        cursor: u64,
    },
    /// A page of live objects, from `cursor` (0 first).
    List {
        /// Where to go on: 0, or the `next` of the page before.
        cursor: u64,
        /// Most objects wanted; the daemon sends at most [`MAX_PAGE`] (also
        /// for 0).
        limit: u32,
        /// Which objects; a caller other than root sees only its own.
        filter: ListFilter,
    },
    /// Occupancy, usage per uid and limits.
    Usage,
    /// A read-only descriptor of one slot chunk and one heap chunk of a
    /// domain, as a client's reads come to need them (it maps what it
    /// reads, nothing more).
    MapDomain {
        /// The domain, as a handle names it.
        domain: u32,
        /// The slot chunk wanted ([`MapDomain::NONE`]: none).
        slot_chunk: u32,
        /// The heap chunk wanted ([`MapDomain::NONE`]: none).
        heap_chunk: u32,
    },
    /// First message on a connection that takes back a session after the
    /// daemon restarted: answered by WELCOME (the session's references
    /// intact, fresh rings) or REFUSED.
    Resume {
        /// The protocol the client speaks ([`crate::PROTOCOL_VERSION`]).
        version: u32,
        /// The session's id, as WELCOME gave it.
        session_id: u64,
        /// The session's resume token, as WELCOME gave it.
        token: [u8; 16],
    },
}

/// What MAP_DOMAIN may say.
pub struct MapDomain;

impl MapDomain {
    /// "No chunk of this kind."
    pub const NONE: u32 = u32::MAX;
}

/// Which objects LIST shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only DETACHED objects (to find orphans).
    pub detached_only: bool,
    /// Only objects of this uid.
    pub owner: Option<u32>,
}

/// One attached session, as SESSIONS lists it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionInfo {
    /// The session's id, as WELCOME gave it.
    pub id: u64,
    /// The client's process id, from `SO_PEERCRED` at `connect()`.
    pub pid: u32,
    /// The client's uid, from `SO_PEERCRED`: the owner of what it inserts.
    pub uid: u32,
    /// The client's gid, from `SO_PEERCRED`.
    pub gid: u32,
    /// Rings the session has open now.
    pub rings: u32,
    /// References the session holds (to objects removed since, too, until
    /// they are purged).
    pub references: u64,
    /// The name the client gave in HELLO.
    pub name: String,
}

/// One live object, as LIST shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The object's handle.
    pub handle: u64,
    /// Length of its value, in bytes.
    pub size: u64,
    /// The uid that inserted it and owns it.
    pub owner: u32,
    /// References all sessions hold together (0 for a DETACHED object
    /// nobody retained).
    pub refs: u32,
    /// Its object flags ([`crate::flags`]), as INSERT gave them.
    pub flags: u32,
}

/// What one uid is charged for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UidUsage {
    /// The uid.
    pub uid: u32,
    /// Live objects charged to it: those it created and still references
    /// (or DETACHED), and others' it alone keeps alive.
    pub objects: u64,
    /// Bytes of the values of those objects.
    pub value_bytes: u64,
    /// Objects its sessions reference: an entry per session and object.
    pub references: u64,
    /// Handles granted ahead to its sessions for posted inserts and not
    /// used yet: each counts against the object limits like an object (0
    /// from a daemon that does not say).
    pub reserved: u64,
    /// Byte credit granted ahead to its sessions and not spent yet: counts
    /// against the byte limits like value bytes (0 from a daemon that does
    /// not say).
    pub credit: u64,
}

/// What one worker thread serves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerUsage {
    /// Rings it serves now.
    pub rings: u32,
    /// Data-path requests it has served since the daemon started.
    pub ops: u64,
}

/// The operator's view of the registry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageReply {
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// Requests per second over the last second.
    pub ops_per_sec: u64,
    /// Limit on live objects, all uids together.
    pub max_objects: u64,
    /// Limit on value bytes, all uids together (ring staging counts too).
    pub max_bytes: u64,
    /// Limit on the objects one uid may own.
    pub uid_max_objects: u64,
    /// Limit on the value bytes one uid may own.
    pub uid_max_bytes: u64,
    /// Limit on the objects one uid's sessions may reference together.
    pub uid_max_references: u64,
    /// Live objects per shard: for a caller other than root, only those it
    /// may read (its own private objects and every SHARED one).
    pub shards: Vec<u64>,
    /// Usage per uid (only the caller's own unless the caller is root).
    pub uids: Vec<UidUsage>,
    /// Per worker thread, in worker order (global figures: rings and
    /// requests, never objects).
    pub workers: Vec<WorkerUsage>,
    /// Bytes of replaced or removed values whose memory waits for
    /// reclamation (borrowed references may hold it back); root only, 0
    /// for any other caller (it would count other uids' private values).
    pub reclaim_pending: u64,
    /// Limit on the rings one uid may have open (`uid_max_rings`; 0 from a
    /// daemon that does not say).
    pub uid_max_rings: u64,
    /// The descriptors one uid may hold: its share of the daemon's budget
    /// (0 from a daemon that does not say).
    pub uid_max_fds: u64,
    /// What the daemon holds per uid (only the caller's own unless root).
    pub holds: Vec<UidHolds>,
}

/// What the daemon holds for one uid (USAGE).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UidHolds {
    /// The uid.
    pub uid: u32,
    /// Rings open.
    pub rings: u32,
    /// Descriptors held for it: connections, doorbells, descriptors sent
    /// and not yet read.
    pub fds: u32,
    /// Of those, descriptors sent and not yet read.
    pub fds_in_flight: u32,
}

/// Figures of a running daemon.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsReply {
    /// Live objects: all of them for root; for any other caller those it
    /// may read, i.e. its uid's private objects and every SHARED object
    /// (never another uid's private ones).
    pub objects: u64,
    /// Bytes of the values of those objects.
    pub value_bytes: u64,
    /// Attached sessions (past HELLO), all uids together.
    pub sessions: u64,
    /// Data-path requests served since the daemon started, all uids
    /// together.
    pub ops: u64,
}

/// Limits and shared-memory geometry a session gets in WELCOME.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Welcome {
    /// The protocol the daemon speaks ([`crate::PROTOCOL_VERSION`]).
    pub version: u32,
    /// The session's id, as SESSIONS shows it.
    pub session_id: u64,
    /// Longest value the daemon accepts, in bytes, when the session began
    /// (at most [`crate::MAX_VALUE_SIZE_LIMIT`]).
    pub max_value_size: u64,
    /// Limit on live objects, all uids together.
    pub max_objects: u64,
    /// Limit on value bytes, all uids together.
    pub max_bytes: u64,
    /// Entries in each SQ and CQ (a power of two).
    pub ring_entries: u32,
    /// Bytes in each ring's data area.
    pub data_size: u32,
    /// Rings the session's memory holds.
    pub max_rings: u32,
    /// Bytes from one ring's start to the next.
    pub ring_stride: u64,
    /// The registry's instance bits, which every handle of it carries.
    pub instance: u32,
    /// Where the session's pin table lies in its memory (after the rings).
    pub pins_offset: u64,
    /// Entries of the pin table: the borrowed references the session may
    /// hold at once.
    pub pin_entries: u32,
    /// Bytes of values longer than [`crate::pins::UNTALLIED`] the session
    /// may hold borrowed at once (the sum of their lengths): a client
    /// refuses a borrow past it (QUOTA), and the daemon honours a session's
    /// pins for this, and what its entries may hold of shorter values, of
    /// blocks they hold back ([`crate::pins::honoured_bytes`]).
    pub pin_bytes: u64,
    /// The secret that gives this session back after a restart of the
    /// daemon (RESUME); all zero when the daemon keeps no state.
    pub resume_token: [u8; 16],
    /// How long, in milliseconds, a restarted daemon keeps the session for
    /// its client to resume; 0 when sessions do not outlive the daemon.
    pub resume_grace_ms: u32,
}

/// Most descriptors the daemon attaches to one DOMAIN_CHUNKS: the slot
/// chunk and the heap chunk asked for. No reply carries more (WELCOME
/// carries two as well).
pub const MAX_CHUNKS_PER_REPLY: u32 = 2;

/// Messages the daemon sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// HELLO accepted; the session's memfd and the registry header's
    /// read-only memfd are attached, in that order.
    Welcome(Welcome),
    /// HELLO refused: `status` says why (VERSION, QUOTA, PROTOCOL).
    Refused {
        /// A [`crate::Status`] code.
        status: u32,
        /// What happened, for people; at most [`MAX_TEXT`] bytes.
        message: String,
    },
    /// A ring is ready at `index`; the doorbell eventfd of its worker (one
    /// per session and worker, shared by the session's rings it serves) is
    /// attached.
    RingOpened {
        /// The ring's index: it lies at `index × ring_stride` in the
        /// session's memory.
        index: u32,
        /// The offset in the session's memory of the ready word of the
        /// ring's worker (see `crate::ring`): set the ring's bit there
        /// before ringing the doorbell of a parked ring. `None` from a
        /// daemon that predates ready words (the field is absent): ring the
        /// doorbell alone.
        ready_at: Option<u64>,
    },
    /// The request was done.
    Ack,
    /// The registry's figures, for STATS.
    Stats(StatsReply),
    /// A request failed.
    Error {
        /// A [`crate::Status`] code (QUOTA when no ring is free).
        status: u32,
        /// What happened, for people; at most [`MAX_TEXT`] bytes.
        message: String,
    },
    /// The daemon is shutting down; the session ends.
    Shutdown,
    /// A page of sessions; `next` is the cursor of the next page (0: none).
    Sessions {
        /// The sessions of this page, by id.
        sessions: Vec<SessionInfo>,
        /// Cursor of the next page.
        next: u64,
    },
    /// A page of objects; `next` is the cursor of the next page (0: none).
    Objects {
        /// The objects of this page.
        objects: Vec<ObjectInfo>,
        /// Cursor of the next page.
        next: u64,
    },
    /// The operator's view, for USAGE.
    Usage(UsageReply),
    /// Chunks of a domain for MAP_DOMAIN: `slots` read-only descriptors of
    /// slot chunks from `slots_from` on, then `heap` of heap chunks from
    /// `heap_from` on, attached in that order (0 of a kind: the domain has
    /// no such chunk, or none was asked for).
    DomainChunks {
        /// The domain.
        domain: u32,
        /// The first slot chunk attached.
        slots_from: u32,
        /// Slot chunks attached.
        slots: u32,
        /// The first heap chunk attached.
        heap_from: u32,
        /// Heap chunks attached.
        heap: u32,
    },
}

mod kind {
    pub const HELLO: u32 = 1;
    pub const RING_OPEN: u32 = 2;
    pub const RING_CLOSE: u32 = 3;
    pub const STATS: u32 = 4;
    pub const GOODBYE: u32 = 5;
    pub const SESSIONS: u32 = 6;
    pub const LIST: u32 = 7;
    pub const USAGE: u32 = 8;
    pub const MAP_DOMAIN: u32 = 9;
    pub const RESUME: u32 = 10;

    pub const WELCOME: u32 = 101;
    pub const REFUSED: u32 = 102;
    pub const RING_OPENED: u32 = 103;
    pub const ACK: u32 = 104;
    pub const STATS_REPLY: u32 = 105;
    pub const ERROR: u32 = 106;
    pub const SHUTDOWN: u32 = 107;
    pub const SESSIONS_REPLY: u32 = 108;
    pub const OBJECTS_REPLY: u32 = 109;
    pub const USAGE_REPLY: u32 = 110;
    pub const DOMAIN_CHUNKS: u32 = 111;
}

/// Longest message text carried in REFUSED and ERROR.
pub const MAX_TEXT: usize = 1024;

impl ControlRequest {
    /// The request as the bytes of one packet.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            ControlRequest::Hello { version, name } => {
                w.u32(kind::HELLO);
                w.bytes(&HELLO_MAGIC);
                w.u32(*version);
                w.text(name);
            }
            ControlRequest::RingOpen => w.u32(kind::RING_OPEN),
            ControlRequest::RingClose { index } => {
                w.u32(kind::RING_CLOSE);
                w.u32(*index);
            }
            ControlRequest::Stats => w.u32(kind::STATS),
            ControlRequest::Goodbye => w.u32(kind::GOODBYE),
            ControlRequest::Sessions { cursor } => {
                w.u32(kind::SESSIONS);
                w.u64(*cursor);
            }
            ControlRequest::List {
                cursor,
                limit,
                filter,
            } => {
                w.u32(kind::LIST);
                w.u64(*cursor);
                w.u32(*limit);
                w.u32(u32::from(filter.detached_only) | (u32::from(filter.owner.is_some()) << 1));
                w.u32(filter.owner.unwrap_or(0));
            }
            ControlRequest::Usage => w.u32(kind::USAGE),
            ControlRequest::MapDomain {
                domain,
                slot_chunk,
                heap_chunk,
            } => {
                w.u32(kind::MAP_DOMAIN);
                w.u32(*domain);
                w.u32(*slot_chunk);
                w.u32(*heap_chunk);
            }
            ControlRequest::Resume {
                version,
                session_id,
                token,
            } => {
                w.u32(kind::RESUME);
                w.bytes(&HELLO_MAGIC);
                w.u32(*version);
                w.u64(*session_id);
                w.bytes(token);
            }
        }
        w.0
    }

    /// The request in one packet; an error for anything malformed.
    pub fn decode(bytes: &[u8]) -> Result<ControlRequest, DecodeError> {
        let mut r = Decoder(bytes);
        let request = match r.u32()? {
            kind::HELLO => {
                if r.take(4)? != HELLO_MAGIC {
                    return Err(DecodeError::BadMagic);
                }
                let version = r.u32()?;
                let name = r.text(crate::MAX_CLIENT_NAME)?;
                ControlRequest::Hello { version, name }
            }
            kind::RING_OPEN => ControlRequest::RingOpen,
            kind::RING_CLOSE => ControlRequest::RingClose { index: r.u32()? },
            kind::STATS => ControlRequest::Stats,
            kind::GOODBYE => ControlRequest::Goodbye,
            kind::SESSIONS => ControlRequest::Sessions { cursor: r.u64()? },
            kind::LIST => {
                let cursor = r.u64()?;
                let limit = r.u32()?;
                let bits = r.u32()?;
                let owner = r.u32()?;
                if bits & !3 != 0 {
                    return Err(DecodeError::BadField("LIST filter bits"));
                }
                ControlRequest::List {
                    cursor,
                    limit,
                    filter: ListFilter {
                        detached_only: bits & 1 != 0,
                        owner: (bits & 2 != 0).then_some(owner),
                    },
                }
            }
            kind::USAGE => ControlRequest::Usage,
            kind::MAP_DOMAIN => ControlRequest::MapDomain {
                domain: r.u32()?,
                slot_chunk: r.u32()?,
                heap_chunk: r.u32()?,
            },
            kind::RESUME => {
                if r.take(4)? != HELLO_MAGIC {
                    return Err(DecodeError::BadMagic);
                }
                ControlRequest::Resume {
                    version: r.u32()?,
                    session_id: r.u64()?,
                    token: r.array()?,
                }
            }
            other => return Err(DecodeError::UnknownKind(other)),
        };
        r.finish()?;
        Ok(request)
    }
}

impl Reply {
    /// The reply as the bytes of one packet.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            Reply::Welcome(welcome) => {
                w.u32(kind::WELCOME);
                w.u32(welcome.version);
                w.u64(welcome.session_id);
                w.u64(welcome.max_value_size);
                w.u64(welcome.max_objects);
                w.u64(welcome.max_bytes);
                w.u32(welcome.ring_entries);
                w.u32(welcome.data_size);
                w.u32(welcome.max_rings);
                w.u64(welcome.ring_stride);
                w.u32(welcome.instance);
                w.u64(welcome.pins_offset);
                w.u32(welcome.pin_entries);
                w.u64(welcome.pin_bytes);
                w.bytes(&welcome.resume_token);
                w.u32(welcome.resume_grace_ms);
            }
            Reply::Refused { status, message } => {
                w.u32(kind::REFUSED);
                w.u32(*status);
                w.text(message);
            }
            Reply::RingOpened { index, ready_at } => {
                w.u32(kind::RING_OPENED);
                w.u32(*index);
                if let Some(ready_at) = ready_at {
                    w.u64(*ready_at);
                }
            }
            Reply::Ack => w.u32(kind::ACK),
            Reply::Stats(stats) => {
                w.u32(kind::STATS_REPLY);
                w.u64(stats.objects);
                w.u64(stats.value_bytes);
                w.u64(stats.sessions);
                w.u64(stats.ops);
            }
            Reply::Error { status, message } => {
                w.u32(kind::ERROR);
                w.u32(*status);
                w.text(message);
            }
            Reply::Shutdown => w.u32(kind::SHUTDOWN),
            Reply::Sessions { sessions, next } => {
                w.u32(kind::SESSIONS_REPLY);
                w.u64(*next);
                w.u32(sessions.len() as u32);
                for s in sessions {
                    w.u64(s.id);
                    w.u32(s.pid);
                    w.u32(s.uid);
                    w.u32(s.gid);
                    w.u32(s.rings);
                    w.u64(s.references);
                    w.text(&s.name);
                }
            }
            Reply::Objects { objects, next } => {
                w.u32(kind::OBJECTS_REPLY);
                w.u64(*next);
                w.u32(objects.len() as u32);
                for o in objects {
                    w.u64(o.handle);
                    w.u64(o.size);
                    w.u32(o.owner);
                    w.u32(o.refs);
                    w.u32(o.flags);
                }
            }
            Reply::Usage(u) => {
                w.u32(kind::USAGE_REPLY);
                for v in [
                    u.uptime_secs,
                    u.ops_per_sec,
                    u.max_objects,
                    u.max_bytes,
                    u.uid_max_objects,
                    u.uid_max_bytes,
                    u.uid_max_references,
                ] {
                    w.u64(v);
                }
                w.u32(u.shards.len() as u32);
                for &n in &u.shards {
                    w.u64(n);
                }
                w.u32(u.uids.len() as u32);
                for uid in &u.uids {
                    w.u32(uid.uid);
                    w.u64(uid.objects);
                    w.u64(uid.value_bytes);
                    w.u64(uid.references);
                }
                w.u32(u.workers.len() as u32);
                for worker in &u.workers {
                    w.u32(worker.rings);
                    w.u64(worker.ops);
                }
                w.u64(u.reclaim_pending);
                w.u64(u.uid_max_rings);
                w.u64(u.uid_max_fds);
                w.u32(u.holds.len() as u32);
                for hold in &u.holds {
                    for v in [hold.uid, hold.rings, hold.fds, hold.fds_in_flight] {
                        w.u32(v);
                    }
                }
                // Later than the rest: what each uid holds ahead, in the
                // order of `uids`.
                for uid in &u.uids {
                    w.u64(uid.reserved);
                    w.u64(uid.credit);
                }
            }
            Reply::DomainChunks {
                domain,
                slots_from,
                slots,
                heap_from,
                heap,
            } => {
                w.u32(kind::DOMAIN_CHUNKS);
                for v in [*domain, *slots_from, *slots, *heap_from, *heap] {
                    w.u32(v);
                }
            }
        }
        w.0
    }

    /// The reply in one packet; an error for anything malformed.
    pub fn decode(bytes: &[u8]) -> Result<Reply, DecodeError> {
        let mut r = Decoder(bytes);
        let reply = match r.u32()? {
            kind::WELCOME => Reply::Welcome(Welcome {
                version: r.u32()?,
                session_id: r.u64()?,
                max_value_size: r.u64()?,
                max_objects: r.u64()?,
                max_bytes: r.u64()?,
                ring_entries: r.u32()?,
                data_size: r.u32()?,
                max_rings: r.u32()?,
                ring_stride: r.u64()?,
                instance: r.u32()?,
                pins_offset: r.u64()?,
                pin_entries: r.u32()?,
                pin_bytes: r.u64()?,
                resume_token: r.array()?,
                resume_grace_ms: r.u32()?,
            }),
            kind::REFUSED => Reply::Refused {
                status: r.u32()?,
                message: r.text(MAX_TEXT)?,
            },
            kind::RING_OPENED => Reply::RingOpened {
                index: r.u32()?,
                ready_at: r.optional_u64()?,
            },
            kind::ACK => Reply::Ack,
            kind::STATS_REPLY => Reply::Stats(StatsReply {
                objects: r.u64()?,
                value_bytes: r.u64()?,
                sessions: r.u64()?,
                ops: r.u64()?,
            }),
            kind::ERROR => Reply::Error {
                status: r.u32()?,
                message: r.text(MAX_TEXT)?,
            },
            kind::SHUTDOWN => Reply::Shutdown,
            kind::SESSIONS_REPLY => {
                let next = r.u64()?;
                let count = r.count(34)?;
                let mut sessions = Vec::with_capacity(count);
                for _ in 0..count {
                    sessions.push(SessionInfo {
                        id: r.u64()?,
                        pid: r.u32()?,
                        uid: r.u32()?,
                        gid: r.u32()?,
                        rings: r.u32()?,
                        references: r.u64()?,
                        name: r.text(crate::MAX_CLIENT_NAME)?,
                    });
                }
                Reply::Sessions { sessions, next }
            }
            kind::OBJECTS_REPLY => {
                let next = r.u64()?;
                let count = r.count(28)?;
                let mut objects = Vec::with_capacity(count);
                for _ in 0..count {
                    objects.push(ObjectInfo {
                        handle: r.u64()?,
                        size: r.u64()?,
                        owner: r.u32()?,
                        refs: r.u32()?,
                        flags: r.u32()?,
                    });
                }
                Reply::Objects { objects, next }
            }
            kind::USAGE_REPLY => {
                let mut usage = UsageReply {
                    uptime_secs: r.u64()?,
                    ops_per_sec: r.u64()?,
                    max_objects: r.u64()?,
                    max_bytes: r.u64()?,
                    uid_max_objects: r.u64()?,
                    uid_max_bytes: r.u64()?,
                    uid_max_references: r.u64()?,
                    ..UsageReply::default()
                };
                let shards = r.count(8)?;
                usage.shards = (0..shards).map(|_| r.u64()).collect::<Result<_, _>>()?;
                let uids = r.count(28)?;
                for _ in 0..uids {
                    usage.uids.push(UidUsage {
                        uid: r.u32()?,
                        objects: r.u64()?,
                        value_bytes: r.u64()?,
                        references: r.u64()?,
                        reserved: 0,
                        credit: 0,
                    });
                }
                let workers = r.count(12)?;
                for _ in 0..workers {
                    usage.workers.push(WorkerUsage {
                        rings: r.u32()?,
                        ops: r.u64()?,
                    });
                }
                usage.reclaim_pending = r.u64()?;
                // The holds, from daemons that send them.
                if let Some(cap) = r.optional_u64()? {
                    usage.uid_max_rings = cap;
                    usage.uid_max_fds = r.u64()?;
                    let holds = r.count(16)?;
                    for _ in 0..holds {
                        usage.holds.push(UidHolds {
                            uid: r.u32()?,
                            rings: r.u32()?,
                            fds: r.u32()?,
                            fds_in_flight: r.u32()?,
                        });
                    }
                    // What each uid holds ahead, from daemons that say.
                    if r.more() {
                        for uid in &mut usage.uids {
                            uid.reserved = r.u64()?;
                            uid.credit = r.u64()?;
                        }
                    }
                }
                Reply::Usage(usage)
            }
            kind::DOMAIN_CHUNKS => Reply::DomainChunks {
                domain: r.u32()?,
                slots_from: r.u32()?,
                slots: r.u32()?,
                heap_from: r.u32()?,
                heap: r.u32()?,
            },
            other => return Err(DecodeError::UnknownKind(other)),
        };
        r.finish()?;
        Ok(reply)
    }
}

#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    /// A `u16` length and the UTF-8 bytes, cut at a character boundary so the
    /// packet stays within [`MAX_MESSAGE`].
    fn text(&mut self, s: &str) {
        let s = clip(s, MAX_TEXT);
        self.0.extend_from_slice(&(s.len() as u16).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }
}

/// `text` cut to at most `max` bytes at a character boundary.
pub fn clip(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

struct Decoder<'a>(&'a [u8]);

impl<'a> Decoder<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Short);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    /// A trailing `u64` that older peers do not send: `None` at the end.
    /// Whether bytes are left (a later daemon's fields).
    fn more(&self) -> bool {
        !self.0.is_empty()
    }

    fn optional_u64(&mut self) -> Result<Option<u64>, DecodeError> {
        if self.0.is_empty() {
            return Ok(None);
        }
        self.u64().map(Some)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }
    fn text(&mut self, max: usize) -> Result<String, DecodeError> {
        let len = usize::from(self.u16()?);
        if len > max {
            return Err(DecodeError::BadText(max));
        }
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::BadText(max))
    }
    /// A `u32` element count, refused when the rest of the message cannot
    /// hold that many elements of at least `min_size` bytes (so a lying count
    /// allocates nothing).
    fn count(&mut self, min_size: usize) -> Result<usize, DecodeError> {
        let count = self.u32()? as usize;
        if count.saturating_mul(min_size) > self.0.len() {
            return Err(DecodeError::Short);
        }
        Ok(count)
    }
    fn finish(self) -> Result<(), DecodeError> {
        match self.0.len() {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn requests_round_trip() {
        for request in [
            ControlRequest::Hello {
                version: 1,
                name: "tést".into(),
            },
            ControlRequest::RingOpen,
            ControlRequest::RingClose { index: 7 },
            ControlRequest::Stats,
            ControlRequest::Goodbye,
            ControlRequest::Sessions { cursor: 3 },
            ControlRequest::List {
                cursor: 9,
                limit: 50,
                filter: ListFilter {
                    detached_only: true,
                    owner: Some(1000),
                },
            },
            ControlRequest::List {
                cursor: 0,
                limit: 1,
                filter: ListFilter {
                    detached_only: false,
                    owner: None,
                },
            },
            ControlRequest::Usage,
            ControlRequest::MapDomain {
                domain: 3,
                slot_chunk: 1,
                heap_chunk: MapDomain::NONE,
            },
            ControlRequest::Resume {
                version: 1,
                session_id: 9,
                token: [0xa5; 16],
            },
        ] {
            assert_eq!(ControlRequest::decode(&request.encode()), Ok(request));
        }
    }

    #[test]
    fn replies_round_trip() {
        for reply in [
            Reply::Welcome(Welcome {
                version: 1,
                session_id: 9,
                max_value_size: 1 << 20,
                max_objects: 5,
                max_bytes: 6,
                ring_entries: 64,
                data_size: 4096,
                max_rings: 64,
                ring_stride: 8192,
                instance: 3,
                pins_offset: 524_288,
                pin_entries: 1024,
                pin_bytes: 8 << 20,
                resume_token: [7; 16],
                resume_grace_ms: 30_000,
            }),
            Reply::Refused {
                status: 10,
                message: "version".into(),
            },
            Reply::DomainChunks {
                domain: 7,
                slots_from: 1,
                slots: 2,
                heap_from: 3,
                heap: 4,
            },
            Reply::RingOpened {
                index: 3,
                ready_at: Some(4096),
            },
            Reply::RingOpened {
                index: 3,
                ready_at: None,
            },
            Reply::Ack,
            Reply::Stats(StatsReply {
                objects: 1,
                value_bytes: 2,
                sessions: 3,
                ops: 4,
            }),
            Reply::Error {
                status: 6,
                message: "quota".into(),
            },
            Reply::Shutdown,
            Reply::Sessions {
                sessions: vec![SessionInfo {
                    id: 1,
                    pid: 2,
                    uid: 3,
                    gid: 4,
                    rings: 5,
                    references: 6,
                    name: "n".into(),
                }],
                next: 7,
            },
            Reply::Objects {
                objects: vec![ObjectInfo {
                    handle: 1,
                    size: 2,
                    owner: 3,
                    refs: 4,
                    flags: 2,
                }],
                next: 0,
            },
            Reply::Usage(UsageReply {
                uptime_secs: 1,
                ops_per_sec: 2,
                max_objects: 3,
                max_bytes: 4,
                uid_max_objects: 5,
                uid_max_bytes: 6,
                uid_max_references: 12,
                shards: vec![1, 2, 3],
                uids: vec![UidUsage {
                    uid: 1000,
                    objects: 2,
                    value_bytes: 3,
                    references: 4,
                    reserved: 16,
                    credit: 65536,
                }],
                reclaim_pending: 12,
                workers: vec![
                    WorkerUsage { rings: 2, ops: 7 },
                    WorkerUsage {
                        rings: 0,
                        ops: u64::MAX,
                    },
                ],
                uid_max_rings: 8192,
                uid_max_fds: 9000,
                holds: vec![UidHolds {
                    uid: 1000,
                    rings: 3,
                    fds: 5,
                    fds_in_flight: 1,
                }],
            }),
        ] {
            assert_eq!(Reply::decode(&reply.encode()), Ok(reply));
        }
    }

    #[test]
    fn hello_needs_magic_and_short_name() {
        let mut bytes = ControlRequest::Hello {
            version: 1,
            name: "x".into(),
        }
        .encode();
        bytes[4] = b'X';
        assert_eq!(ControlRequest::decode(&bytes), Err(DecodeError::BadMagic));
        let long = ControlRequest::Hello {
            version: 1,
            name: "n".repeat(100),
        }
        .encode();
        assert_eq!(
            ControlRequest::decode(&long),
            Err(DecodeError::BadText(crate::MAX_CLIENT_NAME))
        );
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = ControlRequest::decode(&bytes);
            let _ = Reply::decode(&bytes);
        }
    }
}
