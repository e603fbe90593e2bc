//! Which limit refused a request with QUOTA: stable numeric codes (carried
//! in a QUOTA completion's `value_len`) and names (the daemon's config keys
//! where the limit has one, which begin the text of a QUOTA REFUSED or
//! ERROR). Decoding never fails: an unknown code or text is "not said".

use std::fmt;

/// A limit that can refuse a request with [`crate::Status::Quota`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Limit {
    /// Live objects, all uids together.
    MaxObjects = 1,
    /// Value bytes (ring staging included), all uids together.
    MaxBytes = 2,
    /// Live objects one uid may own.
    UidMaxObjects = 3,
    /// Value bytes one uid may own (its staging, and the blocks its
    /// sessions' borrowed references hold back, too).
    UidMaxBytes = 4,
    /// Ring staging one session may hold at once (4 × the max value size,
    /// at least 4 MiB).
    SessionStaging = 5,
    /// References to one object (or one session's to one object): a `u32`.
    ReferencesPerObject = 6,
    /// Memory for the registry's slot tables ran out.
    SlotMemory = 7,
    /// Memory for the registry's value heap ran out.
    HeapMemory = 8,
    /// Every domain is in use: too many uids own private objects.
    Domains = 9,
    /// Every slot index of the object's domain is in use.
    Slots = 10,
    /// Memory for the session's reference table ran out.
    ReferenceTableMemory = 11,
    /// The daemon's own memory for a value in transit ran out.
    DaemonMemory = 12,
    /// Attached sessions, all uids together.
    MaxSessions = 13,
    /// Attached sessions of one uid (root is exempt).
    UidMaxSessions = 14,
    /// Rings of one session.
    MaxRings = 15,
    /// The daemon's file descriptors.
    FileDescriptors = 16,
    /// Connections of one uid waiting to attach.
    UidWaitingConnections = 17,
    /// Borrowed references (`get_ref`) one session holds open, in pin
    /// entries and in bytes (WELCOME's `pin_bytes`); a client-side limit.
    BorrowedReferences = 18,
    /// Reference-table entries one uid's sessions hold together (an entry
    /// per session and object it references, whatever the count).
    UidMaxReferences = 19,
    /// Rings one uid may have open over all its sessions (root is exempt).
    UidMaxRings = 20,
    /// One uid's share of the daemon's file descriptors (connections,
    /// doorbells, descriptors sent and not yet read; root is exempt).
    UidFileDescriptors = 21,
}

impl Limit {
    /// Every limit, in the order of their codes (1 on).
    pub const ALL: [Limit; 21] = [
        Limit::MaxObjects,
        Limit::MaxBytes,
        Limit::UidMaxObjects,
        Limit::UidMaxBytes,
        Limit::SessionStaging,
        Limit::ReferencesPerObject,
        Limit::SlotMemory,
        Limit::HeapMemory,
        Limit::Domains,
        Limit::Slots,
        Limit::ReferenceTableMemory,
        Limit::DaemonMemory,
        Limit::MaxSessions,
        Limit::UidMaxSessions,
        Limit::MaxRings,
        Limit::FileDescriptors,
        Limit::UidWaitingConnections,
        Limit::BorrowedReferences,
        Limit::UidMaxReferences,
        Limit::UidMaxRings,
        Limit::UidFileDescriptors,
    ];

    /// The limit's code (1 on; 0 means "not said").
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The limit with this code; `None` for 0 (an older daemon, or not
    /// said) and for codes this side does not know.
    pub fn from_code(code: u32) -> Option<Limit> {
        Limit::ALL.get(code.checked_sub(1)? as usize).copied()
    }

    /// The code a QUOTA completion carries in `value_len` for `limit`.
    pub fn completion_code(limit: Option<Limit>) -> u32 {
        limit.map_or(0, Limit::code)
    }

    /// The limit's name: the daemon's config key where it has one.
    pub fn name(self) -> &'static str {
        match self {
            Limit::MaxObjects => "max_objects",
            Limit::MaxBytes => "max_bytes",
            Limit::UidMaxObjects => "uid_max_objects",
            Limit::UidMaxBytes => "uid_max_bytes",
            Limit::SessionStaging => "session_staging",
            Limit::ReferencesPerObject => "references_per_object",
            Limit::SlotMemory => "slot_memory",
            Limit::HeapMemory => "heap_memory",
            Limit::Domains => "domains",
            Limit::Slots => "slots",
            Limit::ReferenceTableMemory => "reference_table_memory",
            Limit::DaemonMemory => "daemon_memory",
            Limit::MaxSessions => "max_sessions",
            Limit::UidMaxSessions => "uid_max_sessions",
            Limit::MaxRings => "max_rings",
            Limit::FileDescriptors => "file_descriptors",
            Limit::UidWaitingConnections => "uid_waiting_connections",
            Limit::BorrowedReferences => "borrowed_references",
            Limit::UidMaxReferences => "uid_max_references",
            Limit::UidMaxRings => "uid_max_rings",
            Limit::UidFileDescriptors => "uid_file_descriptors",
        }
    }

    /// What the limit bounds, in a few words.
    pub fn description(self) -> &'static str {
        match self {
            Limit::MaxObjects => "live objects in all",
            Limit::MaxBytes => "value bytes in all",
            Limit::UidMaxObjects => "objects one uid may own",
            Limit::UidMaxBytes => "value bytes one uid may own",
            Limit::SessionStaging => "ring staging one session may hold",
            Limit::ReferencesPerObject => "references to one object",
            Limit::SlotMemory => "the daemon's memory for slot tables",
            Limit::HeapMemory => "the daemon's memory for values",
            Limit::Domains => "uids with private objects",
            Limit::Slots => "slots of one domain",
            Limit::ReferenceTableMemory => "the daemon's memory for the session's references",
            Limit::DaemonMemory => "the daemon's memory for a value in transit",
            Limit::MaxSessions => "attached sessions in all",
            Limit::UidMaxSessions => "attached sessions of one uid",
            Limit::MaxRings => "rings of one session",
            Limit::FileDescriptors => "the daemon's file descriptors",
            Limit::UidWaitingConnections => "connections of one uid waiting to attach",
            Limit::BorrowedReferences => "borrowed references (or their bytes) open in one session",
            Limit::UidMaxReferences => "objects one uid's sessions may reference",
            Limit::UidMaxRings => "rings of one uid",
            Limit::UidFileDescriptors => "the daemon's file descriptors held for one uid",
        }
    }

    /// The limit with this name, if there is one.
    pub fn from_name(name: &str) -> Option<Limit> {
        Limit::ALL.into_iter().find(|limit| limit.name() == name)
    }

    /// The text of a QUOTA REFUSED or ERROR: the limit's name, `": "`, then
    /// `detail`.
    pub fn refusal_text(self, detail: impl fmt::Display) -> String {
        format!("{}: {detail}", self.name())
    }

    /// The limit a QUOTA REFUSED or ERROR text names (see
    /// [`Limit::refusal_text`]); `None` when it names none this side knows.
    pub fn named_in(text: &str) -> Option<Limit> {
        Limit::from_name(text.split_once(": ")?.0)
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn codes_and_names_round_trip() {
        for (i, limit) in Limit::ALL.into_iter().enumerate() {
            assert_eq!(limit.code(), i as u32 + 1, "{limit:?}");
            assert_eq!(Limit::from_code(limit.code()), Some(limit));
            assert_eq!(Limit::from_name(limit.name()), Some(limit));
            assert_eq!(Limit::named_in(&limit.refusal_text("x: y")), Some(limit));
            assert_eq!(Limit::completion_code(Some(limit)), limit.code());
        }
        assert_eq!(Limit::from_code(0), None);
        assert_eq!(Limit::completion_code(None), 0);
        assert_eq!(Limit::named_in("session cap reached"), None);
        assert_eq!(Limit::named_in("max_session: 3"), None);
    }

    proptest! {
        #[test]
        fn any_code_or_text_decodes_without_panic(code: u32, text: String) {
            if let Some(limit) = Limit::from_code(code) {
                prop_assert_eq!(limit.code(), code);
            }
            let _ = Limit::named_in(&text);
        }
    }
}
