//! The sealed values of an authorization flow (`onboarding_flows`: the
//! public token from the code exchange, the new trusted app's secret, its
//! first token), each sealed together with where it may be sent, for every
//! backend.
//!
//! Why: the flow sends these to the tenant's `pbx_base_url` (and the new
//! secret under `app_client_id`), both clear columns. Sealed alone, anyone
//! who can edit a copy of the database could point a half-done flow at
//! their own server and collect the PBX user's token or the new app's
//! secret without the master key. So, as in `credentials.rs`, the sealed
//! value holds `[value, pbx_base_url, client_id]` (client id "" for the
//! tokens) and every read compares the clear columns with the sealed
//! copies: a mismatch is [`StoreError::FlowTampered`] naming the column.
//!
//! Does not: read or write rows (each backend does), or decide what a flow
//! does with a fault (`onboarding` does).

use super::{open as open_alone, open_parts as open_all, seal_parts, Field};
use crate::crypto::Keyring;
use crate::secret::Secret;
use crate::store::StoreError;

/// Sealed parts, in order: value, pbx_base_url, client_id.
const PARTS: usize = 3;

/// One sealed column of `onboarding_flows`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FlowSecret {
    PublicToken,
    AppSecret,
    FirstToken,
}

impl FlowSecret {
    pub(crate) const ALL: [FlowSecret; 3] = [
        FlowSecret::PublicToken,
        FlowSecret::AppSecret,
        FlowSecret::FirstToken,
    ];

    pub(crate) fn column(self) -> &'static str {
        match self {
            FlowSecret::PublicToken => "public_token_sealed",
            FlowSecret::AppSecret => "app_secret_sealed",
            FlowSecret::FirstToken => "token_sealed",
        }
    }

    pub(crate) fn field(self) -> Field {
        match self {
            FlowSecret::PublicToken => Field::FlowPublicToken,
            FlowSecret::AppSecret => Field::FlowTrustedApp,
            FlowSecret::FirstToken => Field::FlowToken,
        }
    }

    pub(crate) fn legacy_field(self) -> Field {
        match self {
            FlowSecret::PublicToken => Field::OnboardingPublicToken,
            FlowSecret::AppSecret => Field::OnboardingTrustedSecret,
            FlowSecret::FirstToken => Field::OnboardingToken,
        }
    }

    /// What operators read in messages.
    fn label(self) -> &'static str {
        match self {
            FlowSecret::PublicToken => "PBX user's access token",
            FlowSecret::AppSecret => "new trusted application's secret",
            FlowSecret::FirstToken => "new trusted application's first token",
        }
    }
}

/// Where a flow's value may be sent: the tenant's base URL and, for the
/// new app's secret, its client id ("" for the tokens).
pub(crate) struct Dest<'a> {
    pub base_url: &'a str,
    pub client_id: &'a str,
}

pub(crate) fn seal(
    keys: &Keyring,
    tenant_id: &str,
    which: FlowSecret,
    value: &str,
    dest: &Dest<'_>,
) -> Result<Vec<u8>, StoreError> {
    seal_parts(
        keys,
        tenant_id,
        which.field(),
        &[value, dest.base_url, dest.client_id],
    )
}

pub(crate) fn open_parts(
    keys: &Keyring,
    tenant_id: &str,
    which: FlowSecret,
    sealed_value: &[u8],
) -> Result<Vec<Secret<String>>, StoreError> {
    open_all(keys, tenant_id, which.field(), sealed_value, PARTS).map_err(|e| {
        StoreError::FlowUnreadable {
            tenant: tenant_id.to_owned(),
            what: which.label(),
            reason: match e {
                StoreError::Unseal { source, .. } => source.to_string(),
                other => other.to_string(),
            },
        }
    })
}

/// Compares the clear columns with the sealed copies; `skip_url` when the
/// caller is replacing the URL anyway (UpdateTenant).
pub(crate) fn check(
    tenant_id: &str,
    which: FlowSecret,
    parts: &[Secret<String>],
    dest: &Dest<'_>,
    skip_url: bool,
) -> Result<(), StoreError> {
    let clear = [
        (1, "pbx_base_url", dest.base_url),
        (2, "app_client_id", dest.client_id),
    ];
    for (i, column, stored) in clear {
        if skip_url && i == 1 {
            continue;
        }
        let sealed = parts.get(i).map_or("", |p| p.expose().as_str());
        if sealed != stored {
            return Err(StoreError::FlowTampered {
                tenant: tenant_id.to_owned(),
                what: which.label(),
                column,
                stored: stored.to_owned(),
                sealed: sealed.to_owned(),
            });
        }
    }
    Ok(())
}

/// The value, if the clear columns match what it was sealed with.
pub(crate) fn open(
    keys: &Keyring,
    tenant_id: &str,
    which: FlowSecret,
    sealed_value: &[u8],
    dest: &Dest<'_>,
) -> Result<Secret<String>, StoreError> {
    let mut parts = open_parts(keys, tenant_id, which, sealed_value)?;
    check(tenant_id, which, &parts, dest, false)?;
    // open_parts returned exactly PARTS parts.
    Ok(parts.swap_remove(0))
}

/// UpdateTenant moved the tenant: the value sealed again bound to
/// `dest.base_url`, or `None` when it does not open or its client id does
/// not match (left as it is: the flow keeps refusing it and
/// BeginAuthorization replaces the flow; the URL change goes on).
pub(crate) fn rebound(
    keys: &Keyring,
    tenant_id: &str,
    which: FlowSecret,
    value: &[u8],
    dest: &Dest<'_>,
) -> Result<Option<Vec<u8>>, StoreError> {
    let Ok(parts) = open_parts(keys, tenant_id, which, value) else {
        return Ok(None);
    };
    if check(tenant_id, which, &parts, dest, true).is_err() {
        return Ok(None);
    }
    seal(keys, tenant_id, which, parts[0].expose(), dest).map(Some)
}

/// Whether the value was sealed the old way (the value alone, before flows
/// were bound): such a flow is ended at start-up, never sent.
pub(crate) fn is_legacy(keys: &Keyring, tenant_id: &str, which: FlowSecret, value: &[u8]) -> bool {
    open_alone(keys, tenant_id, which.legacy_field(), value).is_ok()
}

/// What an ended pre-binding flow says (tenant last_error and flow error).
pub(crate) const RETIRED: &str = "authorization flow ended: it was interrupted across the upgrade to a pbx-tokend that seals a flow's tokens and secrets together with the PBX address they may be sent to, and its values were sealed the old way; nothing was sent with them; run BeginAuthorization to start the authorization again";
