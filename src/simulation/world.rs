//! The static world of a run: the PBX hosts and the tenants' ids and
//! trusted-app credentials, drawn from the seed.
//!
//! Does not: change during a run (the fault plan says what goes wrong).

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::Rng;

use super::plan::host_of;

/// The static world the PBX serves: hosts and the tenants' trusted apps.
#[derive(Debug)]
pub struct World {
    pub hosts: Vec<String>,
    pub host_index: HashMap<String, usize>,
    pub tenant_ids: Vec<String>,
    pub client_ids: Vec<String>,
    pub secrets: Vec<String>,
    pub client_index: HashMap<String, usize>,
    pub lifetime_secs: u64,
}

impl World {
    pub fn new(tenants: usize, hosts: usize, lifetime_secs: u64, rng: &mut StdRng) -> World {
        let hosts: Vec<String> = (0..hosts.max(1))
            .map(|h| format!("pbx-{h:03}.sim.example"))
            .collect();
        let host_index = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| (h.clone(), i))
            .collect();
        let tenant_ids: Vec<String> = (0..tenants).map(|i| format!("t{i:06}")).collect();
        let client_ids: Vec<String> = (0..tenants).map(|i| format!("app-{i:06}")).collect();
        let secrets = (0..tenants)
            .map(|i| format!("secret-{i:06}-{:08x}", rng.gen::<u32>()))
            .collect();
        let client_index = client_ids
            .iter()
            .enumerate()
            .map(|(i, c)| (c.clone(), i))
            .collect();
        World {
            hosts,
            host_index,
            tenant_ids,
            client_ids,
            secrets,
            client_index,
            lifetime_secs,
        }
    }

    pub fn host_of(&self, tenant: usize) -> usize {
        host_of(tenant, self.hosts.len())
    }
}
