//! `PROTOCOL.md` checked against the code, so the text other-language
//! clients are written from cannot drift: every control message the codec
//! knows has its row in the kind table, with the number it encodes to and
//! its name, and no row is left over; the packet limit is the code's; the
//! opcode and status tables carry the code's numbers; the limit table is
//! every limit QUOTA can name, with its code and name.

use hreg_proto::control::{
    ControlRequest, ListFilter, Reply, StatsReply, UsageReply, Welcome, MAX_MESSAGE,
};
use hreg_proto::{Limit, Opcode, Status};
use std::collections::BTreeMap;

fn document() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/PROTOCOL.md"))
        .expect("PROTOCOL.md")
}

/// The rows `| number | NAME | ...` of the table that follows `heading`.
fn table(doc: &str, heading: &str) -> BTreeMap<u32, String> {
    let start = doc
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading:?}"));
    doc[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            Some((cells.get(1)?.parse().ok()?, cells.get(2)?.to_string()))
        })
        .collect()
}

/// The name of a request's kind, as the table writes it. A new variant
/// fails to compile here until it is named (and documented).
fn request_name(request: &ControlRequest) -> &'static str {
    match request {
        ControlRequest::Hello { .. } => "HELLO",
        ControlRequest::RingOpen => "RING_OPEN",
        ControlRequest::RingClose { .. } => "RING_CLOSE",
        ControlRequest::Stats => "STATS",
        ControlRequest::Goodbye => "GOODBYE",
        ControlRequest::Sessions { .. } => "SESSIONS",
        ControlRequest::List { .. } => "LIST",
        ControlRequest::Usage => "USAGE",
        ControlRequest::MapDomain { .. } => "MAP_DOMAIN",
        ControlRequest::Resume { .. } => "RESUME",
    }
}

fn reply_name(reply: &Reply) -> &'static str {
    match reply {
        Reply::Welcome(_) => "WELCOME",
        Reply::Refused { .. } => "REFUSED",
        Reply::RingOpened { .. } => "RING_OPENED",
        Reply::Ack => "ACK",
        Reply::Stats(_) => "STATS_REPLY",
        Reply::Error { .. } => "ERROR",
        Reply::Shutdown => "SHUTDOWN",
        Reply::Sessions { .. } => "SESSIONS_REPLY",
        Reply::Objects { .. } => "OBJECTS_REPLY",
        Reply::Usage(_) => "USAGE_REPLY",
        Reply::DomainChunks { .. } => "DOMAIN_CHUNKS",
    }
}

fn kind_of(bytes: &[u8]) -> u32 {
    u32::from_le_bytes(bytes[..4].try_into().unwrap())
}

#[test]
fn the_kind_table_is_the_codec() {
    let doc = document();
    let rows = table(&doc, "## 1. The control socket");
    let requests = [
        ControlRequest::Hello {
            version: 1,
            name: String::new(),
        },
        ControlRequest::RingOpen,
        ControlRequest::RingClose { index: 0 },
        ControlRequest::Stats,
        ControlRequest::Goodbye,
        ControlRequest::Sessions { cursor: 0 },
        ControlRequest::List {
            cursor: 0,
            limit: 0,
            filter: ListFilter::default(),
        },
        ControlRequest::Usage,
        ControlRequest::MapDomain {
            domain: 0,
            slot_chunk: 0,
            heap_chunk: 0,
        },
        ControlRequest::Resume {
            version: 1,
            session_id: 0,
            token: [0; 16],
        },
    ];
    let replies = [
        Reply::Welcome(Welcome::default()),
        Reply::Refused {
            status: 0,
            message: String::new(),
        },
        Reply::RingOpened {
            index: 0,
            ready_at: Some(0),
        },
        Reply::Ack,
        Reply::Stats(StatsReply::default()),
        Reply::Error {
            status: 0,
            message: String::new(),
        },
        Reply::Shutdown,
        Reply::Sessions {
            sessions: Vec::new(),
            next: 0,
        },
        Reply::Objects {
            objects: Vec::new(),
            next: 0,
        },
        Reply::Usage(UsageReply::default()),
        Reply::DomainChunks {
            domain: 0,
            slots_from: 0,
            slots: 0,
            heap_from: 0,
            heap: 0,
        },
    ];
    let mut coded = BTreeMap::new();
    for r in &requests {
        coded.insert(kind_of(&r.encode()), request_name(r).to_string());
    }
    for r in &replies {
        coded.insert(kind_of(&r.encode()), reply_name(r).to_string());
    }
    assert_eq!(
        coded.len(),
        requests.len() + replies.len(),
        "two messages share a kind"
    );
    assert_eq!(
        rows, coded,
        "PROTOCOL.md's kind table differs from the codec"
    );
}

#[test]
fn the_packet_limit_is_the_codes() {
    let doc = document();
    let limit = format!("at most\n{MAX_MESSAGE} bytes");
    let flat = doc.replace('\n', " ");
    assert!(
        flat.contains(&limit.replace('\n', " ")),
        "PROTOCOL.md must say packets are at most {MAX_MESSAGE} bytes"
    );
}

#[test]
fn opcodes_and_statuses_carry_the_codes_numbers() {
    let doc = document();
    let opcodes = table(&doc, "Opcodes:");
    for (code, name) in &opcodes {
        let opcode = Opcode::from_u8(*code as u8).unwrap_or_else(|| panic!("opcode {code}"));
        assert_eq!(
            format!("{opcode:?}").to_uppercase(),
            name.replace('_', ""),
            "opcode {code}"
        );
    }
    assert_eq!(opcodes.len(), 10, "every opcode has a row");
    let statuses = table(&doc, "## 4. Statuses");
    for (code, name) in &statuses {
        let status = Status::from_u32(*code).unwrap_or_else(|| panic!("status {code}"));
        assert_eq!(
            format!("{status:?}").to_uppercase(),
            name.replace('_', ""),
            "status {code}"
        );
    }
}

#[test]
fn the_limit_table_is_every_limit_with_its_code_and_name() {
    let doc = document();
    let rows = table(&doc, "Limits:");
    let coded: BTreeMap<u32, String> = Limit::ALL
        .into_iter()
        .map(|limit| (limit.code(), limit.name().to_owned()))
        .collect();
    assert_eq!(rows, coded, "PROTOCOL.md's limit table differs from Limit");
    let example = doc
        .replace('\n', " ")
        .split('`')
        .find(|quoted| quoted.starts_with("max_sessions: "))
        .map(str::to_owned)
        .expect("section 1 quotes a QUOTA text");
    assert_eq!(Limit::named_in(&example), Some(Limit::MaxSessions));
}

#[test]
fn the_handle_and_read_side_figures_are_the_codes() {
    use hreg_proto::handle::{DOMAIN_BITS, GENERATION_BITS, INSTANCE_BITS, SLOT_BITS};
    use hreg_proto::pins::PIN_ENTRIES;
    use hreg_proto::table::{
        header, FIRST_SLOT_CHUNK, INLINE_VALUE, MAX_SLOT_CHUNKS, SHARED_DOMAIN, SLOT_SIZE,
    };
    let flat = document().replace('\n', " ");
    for said in [
        format!("| instance ({INSTANCE_BITS})|"),
        format!("domain ({DOMAIN_BITS})"),
        format!("generation ({GENERATION_BITS})"),
        format!("slot ({SLOT_BITS})"),
        format!("Domain {SHARED_DOMAIN} holds every SHARED object"),
        format!("`{FIRST_SLOT_CHUNK} << k` slots of {SLOT_SIZE} bytes (at most {MAX_SLOT_CHUNKS} chunks)"),
        format!("up to {INLINE_VALUE} bytes"),
        format!("(`pin entries` entries, {PIN_ENTRIES})"),
        format!("read-only, {} bytes", header::LEN),
        format!("layout version `u32` ({})", header::VERSION),
        format!(
            "magic `\"{}\"`",
            String::from_utf8_lossy(&header::MAGIC.to_le_bytes())
        ),
    ] {
        assert!(flat.contains(&said), "PROTOCOL.md must say {said:?}");
    }
}
