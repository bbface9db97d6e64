//! STUB (replaced by the real limiter on merge).
use crate::clock::{SharedClock, UnixMs};

#[derive(Debug, Clone, Copy)]
pub struct Throttled {
    pub until: UnixMs,
}

pub struct RequestPermit;

pub struct HostLimiters;

impl HostLimiters {
    pub fn new(_clock: SharedClock, _rps: u32, _concurrent: u32) -> Self {
        HostLimiters
    }
    pub async fn acquire(&self, _host: &str) -> Result<RequestPermit, Throttled> {
        Ok(RequestPermit)
    }
    pub fn throttle(&self, _host: &str, _until: UnixMs) {}
    pub fn throttled_until(&self, _host: &str) -> Option<UnixMs> {
        None
    }
    pub fn reconfigure(&self, _rps: u32, _concurrent: u32) {}
}
