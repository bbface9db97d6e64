//! Authorization flows in flight while the daemon is killed: one driver per
//! onboarding tenant registers it with the public app, authorizes it
//! (BeginAuthorization, the simulator's approval, CompleteAuthorization)
//! and then re-authorizes it again and again until told to stop, so flows
//! are always somewhere between their code exchange and their activation.
//! A driver retries through whatever a kill does: a lost reply is retried,
//! a used, superseded or expired state gets a new BeginAuthorization, a
//! flow holding a new app is resumed by tenant id. A flow is done when the
//! tenant is ACTIVE with a trusted app it did not use before.

use std::time::Duration;

use pbx_tokend::proto::{self, AppCredentials};
use rand::Rng;
use tonic::Code;

use super::load::Shared;
use crate::onboarding::REDIRECT;

async fn pause() {
    let ms = rand::thread_rng().gen_range(10..60);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Onboards `id`, then re-authorizes it after random pauses (up to
/// `max_pause`) until `flows_stop`.
pub async fn drive(sh: &Shared, id: &str, max_pause: Duration) {
    if !register(sh, id).await {
        return;
    }
    let mut current: Option<String> = None;
    loop {
        match flow(sh, id, current.as_deref()).await {
            Some(new) => current = Some(new),
            None => return,
        }
        if sh.flows_stop.is_cancelled() {
            return;
        }
        let ms = rand::thread_rng().gen_range(0..=max_pause.as_millis() as u64);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

async fn register(sh: &Shared, id: &str) -> bool {
    while !sh.stop.is_cancelled() {
        let r = sh
            .admin()
            .create_tenant(sh.req(proto::CreateTenantRequest {
                tenant_id: id.to_owned(),
                pbx_base_url: sh.sim_url.clone(),
                public_app: Some(AppCredentials {
                    client_id: sh.public.client_id.clone(),
                    client_secret: sh.public.client_secret.clone(),
                }),
                redirect_uri: REDIRECT.into(),
                ..Default::default()
            }))
            .await;
        match r {
            Ok(_) => {}
            Err(s) if s.code() == Code::AlreadyExists => {}
            Err(_) => {
                pause().await;
                continue;
            }
        }
        sh.acked.lock().unwrap().insert(id.to_owned());
        return true;
    }
    false
}

/// One authorization of `id` (a re-authorization when it uses `before`):
/// the new trusted client_id once the tenant is ACTIVE with it.
async fn flow(sh: &Shared, id: &str, before: Option<&str>) -> Option<String> {
    let mut state: Option<String> = None;
    while !sh.stop.is_cancelled() {
        match sh
            .admin()
            .get_tenant(sh.req(proto::GetTenantRequest {
                tenant_id: id.to_owned(),
            }))
            .await
        {
            Ok(t) => {
                let t = t.into_inner();
                if t.state == proto::TenantState::Active as i32
                    && Some(t.trusted_client_id.as_str()) != before
                {
                    let new = t.trusted_client_id;
                    let first = {
                        let mut seen = sh.onboarded.lock().unwrap();
                        let history = seen.entry(id.to_owned()).or_default();
                        history.push(new.clone());
                        history.len() == 1
                    };
                    if first {
                        sh.add_to_pool(id);
                    }
                    Shared::count(&sh.counters.flows_completed);
                    return Some(new);
                }
            }
            Err(s) if s.code() == Code::NotFound => {
                sh.violation(format!("onboarding tenant {id} was registered and is gone"));
                return None;
            }
            Err(_) => {
                pause().await;
                continue;
            }
        }
        let Some(current) = state.clone() else {
            Shared::count(&sh.counters.begins);
            match sh
                .admin()
                .begin_authorization(sh.req(proto::BeginAuthorizationRequest {
                    tenant_id: id.to_owned(),
                }))
                .await
            {
                Ok(b) => state = Some(b.into_inner().state),
                // A flow holds a new app: it must be finished, not replaced.
                Err(s) if s.code() == Code::FailedPrecondition => {
                    Shared::count(&sh.counters.resumes_by_tenant);
                    let _ = complete(sh, "", id, "").await;
                }
                Err(_) => pause().await,
            }
            continue;
        };
        // A fresh code each time: a kill may have spent the last one.
        let code = sh.sim.approve(&sh.public.client_id, REDIRECT).unwrap();
        match complete(sh, &current, "", &code).await {
            Ok(()) => {}
            // Used, superseded, failed or expired: start again.
            Err(Code::FailedPrecondition) => state = None,
            Err(_) => pause().await,
        }
    }
    None
}

async fn complete(sh: &Shared, state: &str, tenant: &str, code: &str) -> Result<(), Code> {
    Shared::count(&sh.counters.completes);
    let r = sh
        .admin()
        .complete_authorization(sh.req(proto::CompleteAuthorizationRequest {
            state: state.to_owned(),
            tenant_id: tenant.to_owned(),
            code: code.to_owned(),
        }))
        .await;
    match r {
        Ok(_) => {
            Shared::count(&sh.counters.completes_ok);
            Ok(())
        }
        Err(s) => Err(s.code()),
    }
}
