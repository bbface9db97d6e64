//! Proactive renewal: the persistent job queue in SQLite is read by one
//! scheduler that hands due jobs to workers under a global and a per-host
//! concurrency limit (the per-host request rate is the PBX limiter's job).
//! With several replicas on PostgreSQL, `duty` holds a lease per PBX host
//! and the scheduler renews only the hosts it holds.
//! Also: host capacity warnings (`capacity`), renewal demand per host and
//! the busy/idle rule's scheduling side when it exceeds the budget
//! (`demand`, `parking`), and cron maintenance (`maintenance`).
//!
//! Does not: talk to the PBX or write tokens itself; a worker asks the
//! broker to renew, and the broker records the outcome and the next due time.
//! The renewal arithmetic is `crate::policy` (below the broker, which uses it
//! too), re-exported here as `renewal::policy`.

pub mod budget;
pub mod capacity;
pub mod demand;
pub mod duty;
pub mod maintenance;
pub mod parking;
pub use crate::policy;
pub mod scheduler;
