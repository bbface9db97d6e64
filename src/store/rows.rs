//! Rows as any backend reads them, validated into domain types: ids, base
//! URLs, states and the JSON columns. A row that does not validate is
//! `StoreError::Corrupt` naming the tenant and column. No SQL here.

use super::StoreError;
use crate::clock::UnixMs;
use crate::domain::{PbxBaseUrl, PbxUser, Tenant, TenantId, TenantState};

/// A tenant row as a backend reads it, before validation.
pub(crate) struct RawTenant {
    pub(crate) id: String,
    pub(crate) display_name: String,
    pub(crate) base_url: String,
    pub(crate) state: String,
    pub(crate) trusted_client_id: Option<String>,
    pub(crate) token_expires_at: Option<i64>,
    pub(crate) next_refresh_at: Option<i64>,
    pub(crate) last_refresh_at: Option<i64>,
    pub(crate) consecutive_failures: i64,
    pub(crate) last_error: Option<String>,
    pub(crate) pbx_user: Option<String>,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
}

impl RawTenant {
    pub(crate) fn into_tenant(self) -> Result<Tenant, StoreError> {
        let pbx_user = match self.pbx_user.as_deref() {
            None => None,
            Some(json) => Some(serde_json::from_str::<PbxUser>(json).map_err(|e| {
                StoreError::Corrupt(format!("pbx_user of tenant {}: {e}", self.id))
            })?),
        };
        let consecutive_failures = u32::try_from(self.consecutive_failures).map_err(|_| {
            StoreError::Corrupt(format!(
                "consecutive_failures of tenant {} is {}",
                self.id, self.consecutive_failures
            ))
        })?;
        Ok(Tenant {
            base_url: parse_base_url(&self.id, &self.base_url)?,
            state: parse_state(&self.id, &self.state)?,
            id: parse_id(&self.id)?,
            display_name: self.display_name,
            trusted_client_id: self.trusted_client_id,
            token_expires_at: self.token_expires_at.map(UnixMs),
            next_refresh_at: self.next_refresh_at.map(UnixMs),
            last_refresh_at: self.last_refresh_at.map(UnixMs),
            consecutive_failures,
            last_error: self.last_error,
            pbx_user,
            created_at: UnixMs(self.created_at),
            updated_at: UnixMs(self.updated_at),
        })
    }
}

pub(crate) fn parse_id(id: &str) -> Result<TenantId, StoreError> {
    TenantId::parse(id).map_err(|e| StoreError::Corrupt(format!("tenant id {id:?}: {e}")))
}

pub(crate) fn parse_base_url(id: &str, url: &str) -> Result<PbxBaseUrl, StoreError> {
    PbxBaseUrl::from_trusted(url)
        .map_err(|e| StoreError::Corrupt(format!("pbx_base_url of tenant {id}: {e}")))
}

pub(crate) fn parse_state(id: &str, state: &str) -> Result<TenantState, StoreError> {
    TenantState::parse(state)
        .ok_or_else(|| StoreError::Corrupt(format!("state of tenant {id} is {state:?}")))
}
