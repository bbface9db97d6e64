//! What the scheduler hands one scheduled renewal: its proof of duty
//! (several replicas) and its hold on the host's turn, which the broker
//! gives back when the PBX request is over.

use crate::store::WriteFence;

/// A scheduled renewal's proof of duty (several replicas on PostgreSQL):
/// the host's lease at the epoch the renewal runs under, and the moment
/// this replica stops starting PBX calls under it (a third of the lease's
/// time before it could expire, measured from when the claim was sent).
#[derive(Debug, Clone)]
pub struct DutyFence {
    pub fence: WriteFence,
    pub stop_at: tokio::time::Instant,
}

/// A scheduled renewal's hold on one of its host's turns in the scheduler
/// (opaque here). Given back (dropped) as soon as the PBX request is
/// over: the scheduler's per-host cap counts requests, and the outcome's
/// database write that follows must not hold up the host's next renewal
/// (on a loaded PostgreSQL the write took longer than the request).
pub struct RequestTurn {
    _guard: Box<dyn Send + Sync>,
}

impl RequestTurn {
    /// `guard` is dropped when the turn is given back.
    pub fn new(guard: impl Send + Sync + 'static) -> Self {
        Self {
            _guard: Box::new(guard),
        }
    }
}

/// What the scheduler hands one renewal; nothing for the other refreshes.
#[derive(Default)]
pub struct Scheduling {
    /// Several replicas: the host's lease the renewal runs under.
    pub duty: Option<DutyFence>,
    pub turn: Option<RequestTurn>,
}
