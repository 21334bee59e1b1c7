//! The cursor watermark: which relay `seq` is safe to persist as the shuffler's cursor.
//!
//! Frames are tracked in read order in a bounded queue of slots `(ordinal, seq, outstanding publishes)`. A
//! frame is *complete* when every message it produced has been acknowledged by JetStream (a frame that produced
//! no message — `#info`, an undecodable frame, a commit whose ops were all dropped — is complete at once). The
//! watermark is the highest `seq` of a complete frame all of whose predecessors are complete too, so a cursor
//! taken from it never passes an un-acked publish. A publish that failed *poisons* its frame: the watermark
//! stops before it until [`Watermark::reset`] (the caller then reconnects to the relay from the watermark and
//! publishes again; JetStream dedup removes what had in fact landed).
//!
//! Completions refer to frames by *ordinal* (a number given at [`Watermark::push`], never reused), so a late
//! completion from before a reset is recognised and ignored. The watermark never moves backwards except through
//! [`Watermark::forget`] (used when the relay says our cursor is in its future). Pure and synchronous.

use std::collections::VecDeque;

/// One frame in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    /// The relay seq, `None` for frames without one (undecodable, unknown, error frames).
    seq: Option<i64>,
    /// Publishes not yet acknowledged.
    outstanding: u32,
    /// A publish of this frame failed: it can never complete in this session.
    failed: bool,
}

/// Tracks frames in read order and computes the persistable cursor.
#[derive(Debug, Clone, Default)]
pub struct Watermark {
    committed: Option<i64>,
    slots: VecDeque<Slot>,
    /// Ordinal of `slots[0]`.
    front: u64,
    /// Ordinal the next pushed frame gets.
    next: u64,
}

impl Watermark {
    /// A tracker starting at `start` (the resumed cursor, if any).
    pub fn new(start: Option<i64>) -> Self {
        Self {
            committed: start,
            ..Self::default()
        }
    }

    /// The highest seq whose frame and all earlier frames are complete (or the start cursor).
    pub fn watermark(&self) -> Option<i64> {
        self.committed
    }

    /// Frames read but not yet behind the watermark.
    pub fn pending_frames(&self) -> usize {
        self.slots.len()
    }

    /// Whether a publish failed in the current session (the caller should stop reading and recover).
    pub fn is_poisoned(&self) -> bool {
        self.slots.iter().any(|s| s.failed)
    }

    /// Records a frame just read, with `seq` (if it has one) and the number of messages it publishes.
    /// Returns the frame's ordinal, the token for its publishes. A frame with `messages == 0` is complete now.
    pub fn push(&mut self, seq: Option<i64>, messages: u32) -> u64 {
        let ordinal = self.next;
        self.next += 1;
        if self.slots.is_empty() {
            self.front = ordinal;
        }
        self.slots.push_back(Slot {
            seq,
            outstanding: messages,
            failed: false,
        });
        self.advance();
        ordinal
    }

    /// One publish of frame `ordinal` was acknowledged. Returns `true` when the watermark moved. Unknown
    /// ordinals (from before a [`reset`](Self::reset), or already complete) are ignored.
    pub fn ack(&mut self, ordinal: u64) -> bool {
        let Some(slot) = self.slot_mut(ordinal) else {
            return false;
        };
        slot.outstanding = slot.outstanding.saturating_sub(1);
        let before = self.committed;
        self.advance();
        before != self.committed
    }

    /// One publish of frame `ordinal` failed: the watermark will not pass this frame until a reset.
    pub fn fail(&mut self, ordinal: u64) {
        if let Some(slot) = self.slot_mut(ordinal) {
            slot.failed = true;
        }
    }

    /// Forgets every frame in flight (their completions will be ignored); the watermark stays. Call after a
    /// failure, before re-reading the relay from [`watermark`](Self::watermark).
    pub fn reset(&mut self) {
        self.slots.clear();
        self.front = self.next;
    }

    /// Moves the watermark up to `seq` (never down) when nothing is in flight: a peer on the same relay and
    /// stream has every event up to `seq` stored, so resuming there loses nothing. Returns `true` when it
    /// moved; `false` (and no change) while frames are pending.
    pub fn advance_to(&mut self, seq: i64) -> bool {
        if !self.slots.is_empty() || self.committed.is_some_and(|c| c >= seq) {
            return false;
        }
        self.committed = Some(seq);
        true
    }

    /// Forgets everything including the watermark: the relay rejected our cursor as being in its future, so
    /// its seqs restarted and the old position means nothing there.
    pub fn forget(&mut self) {
        self.reset();
        self.committed = None;
    }

    fn slot_mut(&mut self, ordinal: u64) -> Option<&mut Slot> {
        let idx = usize::try_from(ordinal.checked_sub(self.front)?).ok()?;
        self.slots.get_mut(idx)
    }

    fn advance(&mut self) {
        while let Some(front) = self.slots.front() {
            if front.outstanding > 0 || front.failed {
                break;
            }
            if let Some(seq) = front.seq {
                // Monotonic: a replayed (lower) seq never moves the watermark back.
                self.committed = Some(self.committed.map_or(seq, |c| c.max(seq)));
            }
            self.slots.pop_front();
            self.front += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_to_moves_up_only_when_idle() {
        let mut w = Watermark::new(Some(10));
        assert!(!w.advance_to(5), "never down");
        let t = w.push(Some(11), 1);
        assert!(!w.advance_to(50), "not while a frame is pending");
        w.reset();
        assert!(!w.ack(t));
        assert!(w.advance_to(50));
        assert_eq!(w.watermark(), Some(50));
        let mut none = Watermark::new(None);
        assert!(none.advance_to(3));
        assert_eq!(none.watermark(), Some(3));
    }

    #[test]
    fn empty_frames_complete_immediately() {
        let mut w = Watermark::new(None);
        w.push(Some(1), 0);
        assert_eq!(w.watermark(), Some(1));
        w.push(None, 0);
        assert_eq!(w.watermark(), Some(1));
        assert_eq!(w.pending_frames(), 0);
    }

    #[test]
    fn out_of_order_acks_wait_for_predecessors() {
        let mut w = Watermark::new(Some(10));
        let a = w.push(Some(11), 2);
        let b = w.push(Some(12), 1);
        let _c = w.push(Some(13), 0);
        assert!(!w.ack(b));
        assert_eq!(w.watermark(), Some(10));
        assert!(!w.ack(a));
        assert_eq!(
            w.watermark(),
            Some(10),
            "one of two publishes still outstanding"
        );
        assert!(w.ack(a));
        assert_eq!(
            w.watermark(),
            Some(13),
            "b and the empty c were waiting behind a"
        );
        assert_eq!(w.pending_frames(), 0);
    }

    #[test]
    fn failure_blocks_until_reset_and_late_completions_are_ignored() {
        let mut w = Watermark::new(Some(5));
        let a = w.push(Some(6), 1);
        let b = w.push(Some(7), 1);
        w.fail(a);
        assert!(w.is_poisoned());
        assert!(!w.ack(b));
        assert_eq!(w.watermark(), Some(5));
        w.reset();
        assert!(!w.is_poisoned());
        assert!(!w.ack(a), "completion from before the reset");
        assert_eq!(w.watermark(), Some(5));
        let c = w.push(Some(6), 1);
        assert_ne!(c, a, "ordinals are never reused");
        assert!(w.ack(c));
        assert_eq!(w.watermark(), Some(6));
    }

    #[test]
    fn never_moves_backwards_on_replay() {
        let mut w = Watermark::new(Some(100));
        let a = w.push(Some(50), 1);
        w.ack(a);
        assert_eq!(w.watermark(), Some(100));
        w.push(Some(101), 0);
        assert_eq!(w.watermark(), Some(101));
        w.forget();
        assert_eq!(w.watermark(), None);
        w.push(Some(3), 0);
        assert_eq!(w.watermark(), Some(3));
    }

    #[test]
    fn extra_acks_and_unknown_ordinals_do_not_panic() {
        let mut w = Watermark::new(None);
        assert!(!w.ack(42));
        w.fail(42);
        let a = w.push(Some(1), 1);
        assert!(w.ack(a));
        assert!(!w.ack(a));
        assert_eq!(w.watermark(), Some(1));
    }

    /// Property check with a deterministic pseudo-random schedule: the watermark is always exactly the highest
    /// seq of the longest fully-acked prefix.
    #[test]
    fn matches_a_brute_force_model() {
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for _round in 0..200 {
            let mut w = Watermark::new(None);
            let mut model: Vec<(i64, u32)> = Vec::new(); // (seq, outstanding), in read order
            let mut pending: Vec<(u64, usize)> = Vec::new(); // (ordinal, model index)
            for seq in 1..=50i64 {
                let n = u32::try_from(next() % 4).expect("small");
                let ord = w.push(Some(seq), n);
                let idx = model.len();
                model.push((seq, n));
                for _ in 0..n {
                    pending.push((ord, idx));
                }
                // Ack a random subset of what is pending.
                while !pending.is_empty() && next() % 3 == 0 {
                    let pick = usize::try_from(next()).expect("usize") % pending.len();
                    let (ord, idx) = pending.swap_remove(pick);
                    w.ack(ord);
                    model[idx].1 -= 1;
                }
                let expect = model
                    .iter()
                    .take_while(|(_, out)| *out == 0)
                    .map(|(s, _)| *s)
                    .last();
                assert_eq!(w.watermark(), expect);
            }
        }
    }
}
