//! The batch planner: a pure function that splits a batch of operations
//! into rounds that each fit one ring (at most `entries` entries in flight,
//! disjoint data-area regions, at most one user of the staging buffer),
//! keeping the operations in order. It does no I/O, so it is tested alone.

use hreg_proto::entry::INLINE_CAPACITY;
use std::ops::Range;

/// What one operation needs from a ring, as the planner sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    /// Only its entry: RETAIN, RELEASE, REMOVE.
    Entry,
    /// Sends a value of `len` bytes (INSERT, REPLACE).
    Write { len: u32 },
    /// Reads a value into a caller capacity of `cap` bytes (GET).
    Read { cap: u64 },
}

/// What a step puts in the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StepKind {
    /// The operation's entry, carrying no value.
    Plain,
    /// The operation's entry with the value inline (≤ 32 bytes).
    WriteInline,
    /// The operation's entry with the value in the step's data region.
    WriteData,
    /// STAGE_WRITE: the value's bytes `[value_off, value_off + len)` go
    /// through the step's data region to the same offset of the staging
    /// buffer.
    StagePiece { value_off: u32 },
    /// The operation's entry naming the staging buffer (the value was sent
    /// by the pieces before it, in earlier rounds).
    WriteStaged,
    /// A GET with the step's data region as its output. `may_stage`: the
    /// capacity exceeds the region, so the daemon may answer STAGED and the
    /// value must be fetched from the staging buffer after the round.
    Read { may_stage: bool },
}

/// One ring entry of a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Step {
    /// Index of the operation in the batch.
    pub op: usize,
    pub kind: StepKind,
    /// Data-area region the step uses (value in, or output); `len` 0 for
    /// none, and then `off` is 0.
    pub off: u32,
    pub len: u32,
}

/// A batch cut into rounds. Each round is submitted whole and all its
/// completions are read before the next round starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    pub steps: Vec<Step>,
    /// Consecutive, non-empty ranges of `steps`, covering all of them.
    pub rounds: Vec<Range<usize>>,
}

/// Smallest output region given to a GET that may be answered STAGED when
/// it joins a round that already uses part of the data area.
const MIN_STAGING_READ_REGION: u32 = 4096;

const ALIGN: u32 = 8;

struct Builder {
    entries: usize,
    data_size: u32,
    plan: Plan,
    round_start: usize,
    used: u32,
    staging_claimed: bool,
}

impl Builder {
    fn count(&self) -> usize {
        self.plan.steps.len() - self.round_start
    }

    fn aligned_used(&self) -> u32 {
        // used ≤ data_size ≤ 1 GiB, so this cannot overflow.
        self.used.div_ceil(ALIGN) * ALIGN
    }

    fn remaining(&self) -> u32 {
        self.data_size.saturating_sub(self.aligned_used())
    }

    fn close_round(&mut self) {
        if self.count() > 0 {
            self.plan
                .rounds
                .push(self.round_start..self.plan.steps.len());
        }
        self.round_start = self.plan.steps.len();
        self.used = 0;
        self.staging_claimed = false;
    }

    /// Adds a step using `len` bytes of data area (≤ data_size), starting a
    /// new round first when this one is full or its staging buffer is taken.
    fn push(&mut self, op: usize, kind: StepKind, len: u32, claims_staging: bool) {
        if self.count() >= self.entries
            || (len > 0 && len > self.remaining())
            || (claims_staging && self.staging_claimed)
        {
            self.close_round();
        }
        let off = if len > 0 { self.aligned_used() } else { 0 };
        if len > 0 {
            self.used = off + len;
        }
        self.staging_claimed |= claims_staging;
        self.plan.steps.push(Step { op, kind, off, len });
    }
}

/// Splits operations into rounds for a ring of `entries` entries and a data
/// area of `data_size` bytes. `None` marks an operation that is not sent
/// (it failed a local check); it gets no step. Requires `entries ≥ 1` and
/// `data_size ≥ 8`.
#[cfg(test)]
pub(crate) fn plan(shapes: &[Option<Shape>], entries: u32, data_size: u32) -> Plan {
    let mut plan = Plan::default();
    plan_into(&mut plan, shapes, entries, data_size);
    plan
}

/// [`plan`] into `out`, reusing its vectors' capacity.
pub(crate) fn plan_into(out: &mut Plan, shapes: &[Option<Shape>], entries: u32, data_size: u32) {
    let mut reused = std::mem::take(out);
    reused.steps.clear();
    reused.rounds.clear();
    let mut b = Builder {
        entries: entries.max(1) as usize,
        data_size: data_size.max(ALIGN) / ALIGN * ALIGN,
        plan: reused,
        round_start: 0,
        used: 0,
        staging_claimed: false,
    };
    let data_size = b.data_size;
    for (op, shape) in shapes.iter().enumerate() {
        let Some(shape) = *shape else { continue };
        match shape {
            Shape::Entry => b.push(op, StepKind::Plain, 0, false),
            Shape::Write { len } if len as usize <= INLINE_CAPACITY => {
                b.push(op, StepKind::WriteInline, 0, false)
            }
            Shape::Write { len } if len <= data_size => b.push(op, StepKind::WriteData, len, false),
            Shape::Write { len } => {
                let mut value_off = 0;
                while value_off < len {
                    let piece = (len - value_off).min(data_size);
                    b.push(op, StepKind::StagePiece { value_off }, piece, true);
                    value_off += piece;
                }
                // The entry that uses the pieces goes out only once every
                // piece is known to have arrived.
                b.close_round();
                b.push(op, StepKind::WriteStaged, 0, false);
            }
            Shape::Read { cap } if cap <= INLINE_CAPACITY as u64 => {
                b.push(op, StepKind::Read { may_stage: false }, 0, false)
            }
            Shape::Read { cap } if cap <= u64::from(data_size) => {
                b.push(op, StepKind::Read { may_stage: false }, cap as u32, false)
            }
            Shape::Read { .. } => {
                let floor = MIN_STAGING_READ_REGION.min(data_size);
                if b.staging_claimed || b.remaining() < floor || b.count() >= b.entries {
                    b.close_round();
                }
                let region = b.remaining();
                b.push(op, StepKind::Read { may_stage: true }, region, true);
            }
        }
    }
    b.close_round();
    *out = b.plan;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn shape() -> impl Strategy<Value = Option<Shape>> {
        prop_oneof![
            1 => Just(None),
            2 => Just(Some(Shape::Entry)),
            2 => (0u32..=40).prop_map(|len| Some(Shape::Write { len })),
            3 => (0u32..=3000).prop_map(|len| Some(Shape::Write { len })),
            2 => (0u64..=40).prop_map(|cap| Some(Shape::Read { cap })),
            3 => (0u64..=3000).prop_map(|cap| Some(Shape::Read { cap })),
            1 => Just(Some(Shape::Read { cap: u64::MAX })),
        ]
    }

    /// Checks every promise the engine relies on.
    fn check(shapes: &[Option<Shape>], entries: u32, data_size: u32, plan: &Plan) {
        // Rounds: consecutive, non-empty, covering, within the SQ.
        let mut next = 0;
        for round in &plan.rounds {
            assert_eq!(round.start, next);
            assert!(round.end > round.start);
            assert!(round.len() <= entries as usize);
            next = round.end;
        }
        assert_eq!(next, plan.steps.len());

        // Within a round: regions aligned, inside the data area, disjoint;
        // staging used by at most one operation, and a staged write's entry
        // is the first of its round.
        for round in &plan.rounds {
            let steps = &plan.steps[round.clone()];
            let mut regions: Vec<(u32, u32)> = steps
                .iter()
                .filter(|s| s.len > 0)
                .map(|s| (s.off, s.off + s.len))
                .collect();
            regions.sort();
            for r in &regions {
                assert_eq!(r.0 % ALIGN, 0);
                assert!(r.1 <= data_size);
            }
            for w in regions.windows(2) {
                assert!(w[0].1 <= w[1].0, "overlap {w:?}");
            }
            let mut staging_ops: Vec<usize> = steps
                .iter()
                .filter(|s| {
                    matches!(
                        s.kind,
                        StepKind::StagePiece { .. } | StepKind::Read { may_stage: true }
                    )
                })
                .map(|s| s.op)
                .collect();
            staging_ops.dedup();
            assert!(staging_ops.len() <= 1, "staging shared: {steps:?}");
            for (i, s) in steps.iter().enumerate() {
                if s.kind == StepKind::WriteStaged {
                    assert_eq!(i, 0);
                }
                if s.len == 0 {
                    assert_eq!(s.off, 0);
                }
            }
        }

        // Order: operations appear in order, each with the steps its shape
        // needs.
        let ops: Vec<usize> = plan.steps.iter().map(|s| s.op).collect();
        assert!(ops.windows(2).all(|w| w[0] <= w[1]));
        for (op, shape) in shapes.iter().enumerate() {
            let steps: Vec<&Step> = plan.steps.iter().filter(|s| s.op == op).collect();
            let Some(shape) = shape else {
                assert!(steps.is_empty());
                continue;
            };
            match *shape {
                Shape::Entry => {
                    assert_eq!(steps.len(), 1);
                    assert_eq!(steps[0].kind, StepKind::Plain);
                }
                Shape::Write { len } if len as usize <= INLINE_CAPACITY => {
                    assert_eq!(steps.len(), 1);
                    assert_eq!(steps[0].kind, StepKind::WriteInline);
                }
                Shape::Write { len } if len <= data_size => {
                    assert_eq!(steps.len(), 1);
                    assert_eq!(steps[0].kind, StepKind::WriteData);
                    assert_eq!(steps[0].len, len);
                }
                Shape::Write { len } => {
                    let (last, pieces) = steps.split_last().unwrap();
                    assert_eq!(last.kind, StepKind::WriteStaged);
                    let mut covered = 0;
                    for p in pieces {
                        assert_eq!(p.kind, StepKind::StagePiece { value_off: covered });
                        assert!(p.len > 0 && p.len <= data_size);
                        covered += p.len;
                    }
                    assert_eq!(covered, len);
                    let round_of = |step: &Step| {
                        let at = plan
                            .steps
                            .iter()
                            .position(|s| std::ptr::eq(s, step))
                            .unwrap();
                        plan.rounds.iter().position(|r| r.contains(&at)).unwrap()
                    };
                    assert!(round_of(last) > round_of(pieces.last().unwrap()));
                }
                Shape::Read { cap } => {
                    assert_eq!(steps.len(), 1);
                    let StepKind::Read { may_stage } = steps[0].kind else {
                        panic!("read planned as {:?}", steps[0].kind)
                    };
                    let region = u64::from(steps[0].len);
                    assert!(region <= cap);
                    if cap <= INLINE_CAPACITY as u64 {
                        assert!(!may_stage);
                    } else {
                        assert_eq!(may_stage, cap > region);
                    }
                    if may_stage {
                        assert!(region > 0);
                    }
                }
            }
        }
    }

    #[test]
    fn small_batch_is_one_round() {
        let shapes = vec![
            Some(Shape::Write { len: 5 }),
            Some(Shape::Read { cap: 16 }),
            Some(Shape::Entry),
            Some(Shape::Write { len: 100 }),
            Some(Shape::Read { cap: 100 }),
        ];
        let plan = plan(&shapes, 256, 4096);
        check(&shapes, 256, 4096, &plan);
        assert_eq!(plan.rounds, vec![0..5]);
        assert_eq!((plan.steps[3].off, plan.steps[3].len), (0, 100));
        assert_eq!((plan.steps[4].off, plan.steps[4].len), (104, 100));
    }

    #[test]
    fn large_write_goes_in_pieces() {
        let shapes = vec![Some(Shape::Write { len: 1000 }), Some(Shape::Entry)];
        let plan = plan(&shapes, 4, 256);
        check(&shapes, 4, 256, &plan);
        // Four pieces of 256, 256, 256, 232, one round each, then the entry
        // using them, with the next operation.
        assert_eq!(plan.rounds.len(), 5);
        assert_eq!(plan.steps[4].kind, StepKind::WriteStaged);
        assert_eq!(plan.rounds[4], 4..6);
    }

    #[test]
    fn sq_size_bounds_rounds() {
        let shapes = vec![Some(Shape::Entry); 10];
        let plan = plan(&shapes, 4, 64);
        check(&shapes, 4, 64, &plan);
        assert_eq!(plan.rounds, vec![0..4, 4..8, 8..10]);
    }

    #[test]
    fn empty_batch_has_no_rounds() {
        assert_eq!(plan(&[], 4, 64), Plan::default());
        assert_eq!(plan(&[None, None], 4, 64), Plan::default());
    }

    #[test]
    fn two_large_reads_never_share_a_round() {
        let shapes = vec![
            Some(Shape::Read { cap: 1 << 20 }),
            Some(Shape::Entry),
            Some(Shape::Read { cap: 1 << 20 }),
        ];
        let plan = plan(&shapes, 64, 4096);
        check(&shapes, 64, 4096, &plan);
        assert_eq!(plan.rounds, vec![0..2, 2..3]);
    }

    proptest! {
        #[test]
        fn plans_keep_their_promises(
            shapes in proptest::collection::vec(shape(), 0..60),
            entries_log in 1u32..6,
            data_words in 8u32..300,
        ) {
            let entries = 1 << entries_log;
            let data_size = data_words * 8;
            let plan = plan(&shapes, entries, data_size);
            check(&shapes, entries, data_size, &plan);
        }
    }
}
