//! The authorization flow as storage sees it: the steps a flow goes
//! through, one flow as read back (secrets opened), one step's outcome to
//! commit, and what completing a flow puts on the tenant. Every backend
//! commits each step in one transaction (see `FlowRepo`).

use super::StoreError;
use crate::clock::UnixMs;
use crate::domain::{AccessToken, AppCredentials, PbxUser, TenantId, TenantState};

/// Where a flow is. Each step names the last outcome committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlowStep {
    /// BeginAuthorization handed out a state; waiting for the code.
    Issued,
    /// Step 1 done: the public token is stored.
    CodeExchanged,
    /// Step 2 under way: the application named `app_name` is being created.
    /// Found at start-up, it means the daemon stopped during that call.
    CreatingApp,
    /// Steps 2-3 done: the new trusted app's credentials are stored.
    AppStored,
    /// Step 4 done: its first token is stored.
    TokenObtained,
    /// Step 5 done: the PBX user is stored.
    UserVerified,
    /// Step 6 done: the tenant uses the new app. The state is consumed.
    Completed,
    /// Ended without a trusted app in use. The state is consumed.
    Failed,
}

impl FlowStep {
    pub const ALL: [FlowStep; 8] = [
        FlowStep::Issued,
        FlowStep::CodeExchanged,
        FlowStep::CreatingApp,
        FlowStep::AppStored,
        FlowStep::TokenObtained,
        FlowStep::UserVerified,
        FlowStep::Completed,
        FlowStep::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FlowStep::Issued => "issued",
            FlowStep::CodeExchanged => "code_exchanged",
            FlowStep::CreatingApp => "creating_app",
            FlowStep::AppStored => "app_stored",
            FlowStep::TokenObtained => "token_obtained",
            FlowStep::UserVerified => "user_verified",
            FlowStep::Completed => "completed",
            FlowStep::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Past the code exchange and not finished: resumable without a code.
    pub fn in_progress(self) -> bool {
        !matches!(
            self,
            FlowStep::Issued | FlowStep::Completed | FlowStep::Failed
        )
    }

    /// A new trusted app's secret is held and not yet in use.
    pub fn holds_new_app(self) -> bool {
        matches!(
            self,
            FlowStep::AppStored | FlowStep::TokenObtained | FlowStep::UserVerified
        )
    }
}

impl std::fmt::Display for FlowStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One flow as stored, secrets opened.
#[derive(Clone, Debug)]
pub struct Flow {
    pub tenant_id: TenantId,
    pub step: FlowStep,
    pub state_expires_at: UnixMs,
    pub public_token: Option<AccessToken>,
    pub app_name: Option<String>,
    pub app: Option<AppCredentials>,
    pub token: Option<AccessToken>,
    pub pbx_user: Option<PbxUser>,
    pub orphaned_apps: Vec<String>,
    pub error: Option<String>,
    pub created_at: UnixMs,
    pub updated_at: UnixMs,
    /// The tenant's base URL when the flow was read: its sealed values were
    /// checked against it, so they may be sent there and nowhere else.
    pub base_url: String,
}

/// Which flow a claim names: by its `state` (SHA-256), or by its tenant
/// (CompleteAuthorization given only the tenant id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlowKey {
    State([u8; 32]),
    Tenant(TenantId),
}

/// One step's outcome, committed in one transaction.
#[derive(Clone, Debug)]
pub enum FlowUpdate {
    /// Step 1: the code was exchanged for the public token.
    CodeExchanged { public_token: AccessToken },
    /// Step 2 starts: recorded *before* the create call, so a crash during
    /// it leaves the name behind.
    CreatingApp { name: String },
    /// Step 2 failed; back to `CodeExchanged`. `orphan`: the name of an app
    /// that may exist in the PBX without its answer stored.
    AppCreationFailed {
        orphan: Option<String>,
        error: String,
    },
    /// Steps 2-3: the new app's credentials, the moment they arrive.
    AppStored { app: AppCredentials },
    /// Step 4.
    TokenObtained { token: AccessToken },
    /// Step 5.
    UserVerified { user: PbxUser },
    /// Back to `AppStored`, dropping the first token (it was refused).
    TokenDropped { error: String },
    /// A step failed and may be retried: the step stays.
    Error { error: String },
    /// The flow ends without a trusted app in use; the public token, any
    /// new app secret and token are wiped. `orphan` as in
    /// `AppCreationFailed` (e.g. a new app the PBX then rejected).
    Failed {
        orphan: Option<String>,
        error: String,
    },
}

/// What step 6 puts on the tenant.
#[derive(Clone, Debug)]
pub struct FlowCompletion {
    pub app: AppCredentials,
    pub token: AccessToken,
    pub user: PbxUser,
    pub state: TenantState,
    /// `None` removes the renewal job (a tenant disabled meanwhile).
    pub renew_at: Option<UnixMs>,
    /// Becomes the tenant's last_error (e.g. apps to delete in the PBX).
    pub note: Option<String>,
}

/// The fence of `FlowRepo::complete_flow`, checked in its transaction on
/// the flow row as stored (`step`, the first token's `issued_at`): a flow
/// completes once, and only with the first token it holds. A replica
/// paused or cut off in step 6 whose claim lapsed, while another one
/// completed the flow (and renewals stored newer tokens since), or while
/// the flow was restarted, must not put its older token and app back.
/// Completing is not fenced by token age otherwise: during a
/// re-authorization the old app's renewals go on and are newer than the
/// flow's first token, yet the operator asked for the new app.
pub(crate) fn completion_fence(
    tenant_id: &str,
    step: &str,
    flow_token_issued_at: Option<i64>,
    c: &FlowCompletion,
) -> Result<(), StoreError> {
    let reason = if step == "completed" || step == "failed" {
        format!("the authorization flow was already {step} by another call (on this or another replica)")
    } else {
        match flow_token_issued_at {
            Some(t) if t != c.token.issued_at.0 => format!(
                "the authorization flow holds another first token (issued at {}) than this call (issued at {}): it was restarted or moved on meanwhile",
                UnixMs(t),
                c.token.issued_at
            ),
            _ => return Ok(()),
        }
    };
    Err(StoreError::Fenced {
        tenant: tenant_id.to_owned(),
        reason,
    })
}
