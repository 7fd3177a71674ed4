//! Whether a fleet of replicas sees a pool down: each replica's own view, its peers' views and a
//! witness's, counted so that no replica fails a pool over on its own view alone.
//!
//! Every replica probes every server and so has its own view of every pool. A replica that has
//! lost its path to a datacenter (a partition, a bad route, a firewall change) sees that
//! datacenter's pools down while the other replicas still reach them. If it acted on its own
//! view, the users arriving through it would move to the paired pool while the same users
//! arriving through the other replicas stayed home, and their registrations would be split
//! across two pools. So automatic failover and failback follow the fleet's verdict, a majority
//! vote.
//!
//! - The **observers** are this replica, its configured peers and the witness, if there is one.
//! - An observer that did not answer this round has no vote. Reasons include a timeout, a wrong
//!   token, or a peer on another config.
//! - There is a **quorum** when more than half of all the configured observers answered, this
//!   replica included. So a replica cut off from its peers never decides alone.
//! - With a quorum, the pool is [`Verdict::Down`] when more than half of the observers that
//!   answered see it down, and [`Verdict::Up`] when more than half see it up.
//! - A tie decides nothing. A witness exists to break ties between two replicas.
//! - Without a quorum, or on a tie, the verdict is [`Verdict::Undecided`]: the replica keeps
//!   serving the pool's users where it serves them now.

/// The fleet's verdict on one pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// More than half of the observers that answered see the pool up, and they are a quorum.
    Up,
    /// More than half of the observers that answered see the pool down, and they are a quorum.
    Down,
    /// No quorum answered, or the answers are tied: nothing may change on this round.
    Undecided,
}

/// The count behind a [`Verdict`], for `/status` and the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Observers configured: this replica, its peers and the witness.
    pub observers: usize,
    /// Observers that answered this round (this replica always does).
    pub answered: usize,
    /// Of those, how many see the pool down.
    pub down: usize,
}

impl Tally {
    /// Counts this replica's view (`own_up`) and each other observer's: `Some(up)` when it
    /// answered, `None` when it did not.
    pub fn count(own_up: bool, others: impl IntoIterator<Item = Option<bool>>) -> Tally {
        let mut tally = Tally {
            observers: 1,
            answered: 1,
            down: usize::from(!own_up),
        };
        for view in others {
            tally.observers += 1;
            if let Some(up) = view {
                tally.answered += 1;
                tally.down += usize::from(!up);
            }
        }
        tally
    }

    /// Whether more than half of the configured observers answered.
    pub fn quorum(&self) -> bool {
        self.answered * 2 > self.observers
    }

    /// The verdict of this count.
    pub fn verdict(&self) -> Verdict {
        if !self.quorum() {
            return Verdict::Undecided;
        }
        let up = self.answered - self.down;
        if self.down * 2 > self.answered {
            Verdict::Down
        } else if up * 2 > self.answered {
            Verdict::Up
        } else {
            Verdict::Undecided
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(own_up: bool, others: &[Option<bool>]) -> Verdict {
        Tally::count(own_up, others.iter().copied()).verdict()
    }

    #[test]
    fn a_replica_alone_in_seeing_a_pool_down_is_outvoted() {
        // Three replicas: this one cannot reach the pool, its two peers can.
        assert_eq!(verdict(false, &[Some(true), Some(true)]), Verdict::Up);
        let t = Tally::count(false, [Some(true), Some(true)]);
        assert_eq!(
            t,
            Tally {
                observers: 3,
                answered: 3,
                down: 1
            }
        );
    }

    #[test]
    fn a_pool_every_replica_sees_down_is_down() {
        assert_eq!(verdict(false, &[Some(false), Some(false)]), Verdict::Down);
        assert_eq!(
            verdict(false, &[Some(false), None]),
            Verdict::Down,
            "two of three answered, both see it down"
        );
        assert_eq!(verdict(true, &[Some(true), None]), Verdict::Up);
    }

    #[test]
    fn a_replica_cut_off_from_its_peers_decides_nothing() {
        assert_eq!(verdict(false, &[None, None]), Verdict::Undecided);
        assert_eq!(verdict(true, &[None, None]), Verdict::Undecided);
        assert!(!Tally::count(false, [None, None]).quorum());
        assert_eq!(
            verdict(false, &[None]),
            Verdict::Undecided,
            "two replicas: one alone is not a majority of two"
        );
    }

    #[test]
    fn a_witness_breaks_a_tie_between_two_replicas() {
        // Two replicas disagree; without a witness they are tied.
        assert_eq!(verdict(false, &[Some(true)]), Verdict::Undecided);
        // The witness sees the pool up: it stays home.
        assert_eq!(verdict(false, &[Some(true), Some(true)]), Verdict::Up);
        // The witness sees it down too: it fails over.
        assert_eq!(verdict(false, &[Some(true), Some(false)]), Verdict::Down);
        // The witness did not answer: two of three answered and they are tied.
        assert_eq!(verdict(false, &[Some(true), None]), Verdict::Undecided);
    }

    #[test]
    fn without_peers_a_replica_is_its_own_quorum() {
        assert_eq!(verdict(false, &[]), Verdict::Down);
        assert_eq!(verdict(true, &[]), Verdict::Up);
    }

    #[test]
    fn five_observers_need_three_answers_and_three_votes() {
        let votes = [Some(false), Some(true), None, None];
        assert_eq!(
            verdict(false, &votes),
            Verdict::Down,
            "3 answered, 2 of 3 down"
        );
        assert_eq!(
            verdict(false, &[Some(false), None, None, None]),
            Verdict::Undecided,
            "2 of 5 answered: no quorum"
        );
        assert_eq!(
            verdict(false, &[Some(false), Some(true), Some(true), None]),
            Verdict::Undecided,
            "4 answered, 2 down, 2 up: a tie"
        );
    }
}
