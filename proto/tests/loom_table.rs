//! loom models of the registry's read side: the slot seqlock (a reader
//! racing two writes of a slot sees one version whole) and cross-process
//! reclamation by hazard pointers (a reader that pinned a value block and
//! found it in its slot again keeps reading the same bytes while the daemon
//! replaces the value and reuses the blocks no pin names). Both run the
//! real functions of
//! `hreg_proto::table` and `hreg_proto::pins` over loom atomics.
//!
//! Run: `RUSTFLAGS="--cfg hreg_loom" cargo test -p hreg-proto --release
//! --test loom_table --target-dir target-loom`

#![cfg(hreg_loom)]

use hreg_proto::pins::{self, pin_table_len, Borrow, ClientPins, PinName, PinScan};
use hreg_proto::shm::{Mapping, ReadWrite};
use hreg_proto::table::{HeapAddress, Payload, Read, Slot, SlotView, INLINE_VALUE, SLOT_SIZE};
use loom::sync::{Arc, Mutex};

/// A 16-byte value that shows tearing: a word and its complement.
fn value(x: u64) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&x.to_le_bytes());
    bytes[8..].copy_from_slice(&(!x).to_le_bytes());
    bytes
}

fn word_of(bytes: &[u8]) -> u64 {
    let x = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    let check = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
    assert_eq!(check, !x, "torn value");
    x
}

fn inline(x: u64) -> Slot {
    let mut bytes = [0u8; INLINE_VALUE];
    bytes[..16].copy_from_slice(&value(x));
    Slot {
        generation: 1,
        flags: 0,
        len: 16,
        owner: 0,
        payload: Payload::Inline(bytes),
    }
}

#[test]
fn a_reader_sees_one_version_whole() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(|| {
        let map = Arc::new(Mapping::words(SLOT_SIZE));
        SlotView::new(&map, 0).unwrap().write(&inline(1));
        let writer = {
            let map = Arc::clone(&map);
            loom::thread::spawn(move || {
                let slot = SlotView::new(&map, 0).unwrap();
                slot.write(&inline(2));
                slot.write(&inline(3));
            })
        };
        let slot = SlotView::new(&map, 0).unwrap();
        let mut out = [0u8; 16];
        let seen = loop {
            match slot.read(1, |n| out.get_mut(..n), |_| None) {
                Read::Value { len: 16 } => break word_of(&out),
                Read::Torn => loom::thread::yield_now(),
                other => panic!("{other:?}"),
            }
        };
        assert!((1..=3).contains(&seen), "{seen}");
        writer.join().unwrap();
    });
}

/// Issue 19: a handle granted ahead is published by its insert. The daemon
/// writes the slot reserved for a session, then (the session's posted
/// insert) its value; a reader that got the handle by another channel sees
/// the slot reserved (and reads again) or the whole value, never STALE and
/// never a torn value.
#[test]
fn a_reserved_slot_is_published_whole_by_its_insert() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(|| {
        let map = Arc::new(Mapping::words(SLOT_SIZE));
        SlotView::new(&map, 0).unwrap().write(&Slot::free(1));
        let reserved = Slot {
            generation: 1,
            flags: 0,
            len: 0,
            owner: 1000,
            payload: Payload::Reserved { session: 7 },
        };
        // The grant happens before the handle exists anywhere.
        SlotView::new(&map, 0).unwrap().write(&reserved);
        let inserter = {
            let map = Arc::clone(&map);
            loom::thread::spawn(move || {
                SlotView::new(&map, 0).unwrap().write(&inline(5));
            })
        };
        let slot = SlotView::new(&map, 0).unwrap();
        let mut out = [0u8; 16];
        let seen = loop {
            match slot.read(1, |n| out.get_mut(..n), |_| None) {
                Read::Value { len: 16 } => break word_of(&out),
                Read::Reserved { session: 7 } => loom::thread::yield_now(),
                Read::Torn => loom::thread::yield_now(),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(seen, 5);
        inserter.join().unwrap();
    });
}

const BLOCK: u64 = 64;
/// Pin entries in the model's table (a session has 1024).
const PINS: usize = 2;

/// A reader borrows the value of a slot (the shipped `ClientPins::borrow`:
/// find the block, pin it, fence, check the slot again) while the daemon
/// replaces the value and retires the old block (`pins::retired`) on one
/// thread, and a pass on another thread takes the retired list (a mutex,
/// as the registry's lists are), fences (`pins::begin_scan`), reads the
/// pins (`PinScan::scan`) and reuses the old block if no pin names it. A
/// borrowed block must read the same, whole value for as long as it is
/// pinned.
#[test]
fn a_pinned_block_is_not_reused() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(|| {
        let slots = Arc::new(Mapping::words(SLOT_SIZE));
        let heap = Arc::new(Mapping::words(2 * BLOCK as usize));
        let session = Arc::new(Mapping::words(pin_table_len(PINS).next_multiple_of(64)));
        let retired_list: Arc<Mutex<Option<PinName>>> = Arc::new(Mutex::new(None));
        // Block 0 holds value 1 and is in the slot.
        heap.store(0, &value(1));
        let first = Slot {
            payload: Payload::Heap(HeapAddress {
                chunk: 0,
                offset: 0,
            }),
            ..inline(0)
        };
        SlotView::new(&slots, 0).unwrap().write(&first);

        // The daemon's writer: replace the value (block 1), retire block 0.
        let writer = {
            let (slots, heap, retired_list) = (
                Arc::clone(&slots),
                Arc::clone(&heap),
                Arc::clone(&retired_list),
            );
            loom::thread::spawn(move || {
                heap.store(BLOCK as usize, &value(2));
                let second = Slot {
                    payload: Payload::Heap(HeapAddress {
                        chunk: 0,
                        offset: BLOCK,
                    }),
                    ..first
                };
                SlotView::new(&slots, 0).unwrap().write(&second);
                pins::retired();
                let old = HeapAddress {
                    chunk: 0,
                    offset: 0,
                };
                *retired_list.lock().unwrap() = PinName::new(0, old);
            })
        };
        // A pass: take what was retired, and reuse it unless a pin names it.
        let pass = {
            let (heap, session, retired_list) = (
                Arc::clone(&heap),
                Arc::clone(&session),
                Arc::clone(&retired_list),
            );
            loom::thread::spawn(move || {
                let Some(retired) = retired_list.lock().unwrap().take() else {
                    return;
                };
                pins::begin_scan();
                let mut pinned = false;
                PinScan::new(&session, 0, PINS)
                    .unwrap()
                    .scan(|name| pinned |= name == retired);
                if !pinned {
                    heap.store(retired.at().offset as usize, &value(3));
                }
            })
        };

        // A reader borrowing the value, and reading it twice while pinned.
        let pins = ClientPins::new(&session, 0, PINS, 1 << 20).unwrap();
        let slot = SlotView::new(&slots, 0).unwrap();
        let (pin, at) = loop {
            match pins.borrow(&slot, 0, 1) {
                Borrow::Pinned { pin, at, len } => {
                    assert_eq!(len, 16);
                    break (pin, at);
                }
                Borrow::Torn => loom::thread::yield_now(),
                other => panic!("{other:?}"),
            }
        };
        let mut first_look = [0u8; 16];
        heap.load(at.offset as usize, &mut first_look);
        let seen = word_of(&first_look);
        assert!(seen == 1 || seen == 2, "a borrowed block holds {seen}");
        loom::thread::yield_now();
        let mut second_look = [0u8; 16];
        heap.load(at.offset as usize, &mut second_look);
        assert_eq!(first_look, second_look, "a pinned block changed");
        drop(pin);
        writer.join().unwrap();
        pass.join().unwrap();
    });
}

/// Borrows a value of the heap: pinned, read twice, unpinned; panics if
/// the block changed while pinned.
fn borrow_and_read(
    slots: &Mapping<ReadWrite>,
    heap: &Mapping<ReadWrite>,
    session: &Mapping<ReadWrite>,
) {
    let pins = ClientPins::new(session, 0, PINS, 1 << 20).unwrap();
    let slot = SlotView::new(slots, 0).unwrap();
    let (pin, at) = loop {
        match pins.borrow(&slot, 0, 1) {
            Borrow::Pinned { pin, at, .. } => break (pin, at),
            Borrow::Torn => loom::thread::yield_now(),
            other => panic!("{other:?}"),
        }
    };
    let mut first_look = [0u8; 16];
    heap.load(at.offset as usize, &mut first_look);
    let seen = word_of(&first_look);
    assert!(seen == 1 || seen == 2, "a borrowed block holds {seen}");
    let mut second_look = [0u8; 16];
    heap.load(at.offset as usize, &mut second_look);
    assert_eq!(first_look, second_look, "a pinned block changed");
    drop(pin);
}

/// Two borrows of one block share its entry: the block stays until the
/// last of them ends, whichever claimed the entry, while the daemon
/// replaces the value, retires the block and reuses it if no pin names it.
#[test]
fn a_shared_pin_holds_until_its_last_borrow() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(2);
    builder.check(|| {
        let slots = Arc::new(Mapping::words(SLOT_SIZE));
        let heap = Arc::new(Mapping::words(2 * BLOCK as usize));
        let session = Arc::new(Mapping::words(pin_table_len(PINS).next_multiple_of(64)));
        heap.store(0, &value(1));
        let first = Slot {
            payload: Payload::Heap(HeapAddress {
                chunk: 0,
                offset: 0,
            }),
            ..inline(0)
        };
        SlotView::new(&slots, 0).unwrap().write(&first);
        let daemon = {
            let (slots, heap, session) =
                (Arc::clone(&slots), Arc::clone(&heap), Arc::clone(&session));
            loom::thread::spawn(move || {
                heap.store(BLOCK as usize, &value(2));
                let second = Slot {
                    payload: Payload::Heap(HeapAddress {
                        chunk: 0,
                        offset: BLOCK,
                    }),
                    ..first
                };
                SlotView::new(&slots, 0).unwrap().write(&second);
                pins::retired();
                let retired = PinName::new(
                    0,
                    HeapAddress {
                        chunk: 0,
                        offset: 0,
                    },
                )
                .unwrap();
                pins::begin_scan();
                let mut pinned = false;
                PinScan::new(&session, 0, PINS)
                    .unwrap()
                    .scan(|name| pinned |= name == retired);
                if !pinned {
                    heap.store(0, &value(3));
                }
            })
        };
        let other = {
            let (slots, heap, session) =
                (Arc::clone(&slots), Arc::clone(&heap), Arc::clone(&session));
            loom::thread::spawn(move || borrow_and_read(&slots, &heap, &session))
        };
        borrow_and_read(&slots, &heap, &session);
        other.join().unwrap();
        daemon.join().unwrap();
    });
}
