//! Re-binding an authorization flow's sealed values when UpdateTenant
//! moves the tenant to another base URL (PostgreSQL), so they may be sent
//! to the new URL and nowhere else.

use super::{execute, query_opt, Tx};
use crate::crypto::Keyring;
use crate::store::seal::flow::{self as flow_seal, Dest, FlowSecret};
use crate::store::StoreError;

/// UpdateTenant moved the tenant to `new_url`: the flow's values are sealed
/// again bound to it; a value that does not open or whose client id does
/// not match is left as it is.
pub(super) async fn rebind_url(
    tx: &Tx<'_>,
    keys: &Keyring,
    tenant_id: &str,
    new_url: &str,
) -> Result<(), StoreError> {
    let Some(row) = query_opt(
        tx,
        "SELECT app_client_id, public_token_sealed, app_secret_sealed, token_sealed \
         FROM onboarding_flows WHERE tenant_id = $1",
        &[&tenant_id],
    )
    .await?
    else {
        return Ok(());
    };
    let client_id: Option<String> = row.try_get(0)?;
    for (i, which) in FlowSecret::ALL.into_iter().enumerate() {
        let Some(value) = row.try_get::<_, Option<Vec<u8>>>(1 + i)? else {
            continue;
        };
        let dest = Dest {
            base_url: new_url,
            client_id: match which {
                FlowSecret::AppSecret => client_id.as_deref().unwrap_or(""),
                _ => "",
            },
        };
        let Some(resealed) = flow_seal::rebound(keys, tenant_id, which, &value, &dest)? else {
            continue;
        };
        execute(
            tx,
            &format!(
                "UPDATE onboarding_flows SET {} = $2 WHERE tenant_id = $1",
                which.column()
            ),
            &[&tenant_id, &resealed],
        )
        .await?;
    }
    Ok(())
}
