//! Tests for `gated/mod.rs`, on tokio's paused clock, with a scripted PBX:
//! the limiter bookkeeping holds whichever caller made the request (a
//! renewal's `client_credentials` or onboarding's `authorization_code`).
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;

use super::*;
use crate::clock::{SharedClock, TokioClock};

const T0: UnixMs = UnixMs(1_700_000_000_000);
const TIMEOUT: Duration = Duration::from_millis(1_000);
const HOST: &str = "pbx.example.com";

/// What the scripted PBX does with the next request.
#[derive(Clone, Copy)]
enum Answer {
    Token,
    /// HTTP 429 with this Retry-After.
    Throttle(Duration),
    /// Fails after the request timeout, as the client does on a slow PBX.
    TimeOut,
    /// Fails at once (connection refused: the provider never had it).
    Refused,
    /// Never answers.
    Hang,
}

struct Scripted {
    answer: Mutex<Answer>,
    calls: AtomicU32,
}

impl Scripted {
    fn new(answer: Answer) -> Arc<Self> {
        Arc::new(Self {
            answer: Mutex::new(answer),
            calls: AtomicU32::new(0),
        })
    }

    fn set(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    async fn answer<T>(&self, ok: T) -> Result<T, PbxError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let answer = *self.answer.lock().unwrap();
        match answer {
            Answer::Token => Ok(ok),
            Answer::Throttle(retry_after) => Err(PbxError::Throttled { retry_after }),
            Answer::TimeOut => {
                tokio::time::sleep(TIMEOUT).await;
                Err(PbxError::Transient {
                    reason: "timed out".into(),
                })
            }
            Answer::Refused => Err(PbxError::Transient {
                reason: "connection refused".into(),
            }),
            Answer::Hang => futures::future::pending().await,
        }
    }
}

fn grant() -> TokenGrant {
    TokenGrant {
        access_token: Secret::new("fresh".into()),
        token_type: "Bearer".into(),
        expires_in_secs: Some(3600),
        refresh_token: None,
    }
}

fn app() -> AppCredentials {
    AppCredentials {
        client_id: "app".into(),
        client_secret: Secret::new("secret".into()),
    }
}

impl PbxApi for Scripted {
    fn client_credentials<'a>(
        &'a self,
        _: &'a PbxBaseUrl,
        _: &'a AppCredentials,
    ) -> BoxFuture<'a, Result<TokenGrant, PbxError>> {
        Box::pin(self.answer(grant()))
    }
}

impl PbxOnboardingApi for Scripted {
    fn authorization_code<'a>(
        &'a self,
        _: &'a PbxBaseUrl,
        _: &'a AppCredentials,
        _: &'a str,
        _: &'a str,
    ) -> BoxFuture<'a, Result<TokenGrant, PbxError>> {
        Box::pin(self.answer(grant()))
    }

    fn create_application<'a>(
        &'a self,
        _: &'a PbxBaseUrl,
        _: &'a Secret<String>,
        _: &'a str,
    ) -> BoxFuture<'a, Result<AppCredentials, PbxError>> {
        Box::pin(self.answer(app()))
    }

    fn get_user<'a>(
        &'a self,
        _: &'a PbxBaseUrl,
        _: &'a Secret<String>,
    ) -> BoxFuture<'a, Result<PbxUser, PbxError>> {
        Box::pin(self.answer(PbxUser {
            id: 1,
            login: "admin".into(),
            client_id: 1,
            admin: true,
            dealer_id: None,
            extension_id: None,
            extension_group_id: None,
        }))
    }
}

struct Fixture {
    pbx: Arc<Scripted>,
    limiter: Arc<HostLimiters>,
    clock: SharedClock,
    onboarding: Arc<GatedOnboardingPbx>,
    tokens: Arc<GatedPbx>,
}

fn fixture(answer: Answer) -> Fixture {
    let clock: SharedClock = Arc::new(TokioClock::starting_at(T0));
    let limiter = Arc::new(HostLimiters::new(clock.clone(), 20, 6));
    let pbx = Scripted::new(answer);
    let tokens = Arc::new(GatedPbx::new(
        pbx.clone(),
        limiter.clone(),
        TIMEOUT.as_millis() as u64,
    ));
    let onboarding = Arc::new(GatedOnboardingPbx::new(tokens.clone(), pbx.clone()));
    Fixture {
        pbx,
        limiter,
        clock,
        onboarding,
        tokens,
    }
}

fn base() -> PbxBaseUrl {
    PbxBaseUrl::from_trusted(&format!("https://{HOST}")).unwrap()
}

async fn exchange(f: &Fixture) -> Result<TokenGrant, FetchFailure> {
    f.onboarding
        .authorization_code(&base(), &app(), "code", "https://crm.example.com/cb")
        .await
}

#[tokio::test(start_paused = true)]
async fn a_429_to_any_caller_throttles_the_host_for_every_caller() {
    let f = fixture(Answer::Throttle(Duration::from_secs(30)));
    let err = exchange(&f).await.unwrap_err();
    assert!(
        matches!(err, FetchFailure::Pbx(PbxError::Throttled { .. })),
        "{err:?}"
    );
    assert_eq!(
        f.limiter.throttled_until(HOST),
        Some(f.clock.now().plus(Duration::from_secs(30)))
    );
    // A renewal's request to the same host is refused without being sent.
    f.pbx.set(Answer::Token);
    let err = f
        .tokens
        .client_credentials(&base(), &app())
        .await
        .unwrap_err();
    assert!(matches!(err, FetchFailure::HostThrottled { .. }), "{err:?}");
    assert_eq!(err.class(), "throttled");
    assert_eq!(f.pbx.calls.load(Ordering::SeqCst), 1);
    // And so is onboarding's first token.
    let err = f
        .onboarding
        .client_credentials(&base(), &app())
        .await
        .unwrap_err();
    assert!(matches!(err, FetchFailure::HostThrottled { .. }));
    assert_eq!(f.pbx.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_code_exchange_holds_its_host_slot_for_the_grace() {
    let f = fixture(Answer::TimeOut);
    assert!(exchange(&f).await.is_err());
    assert_eq!(f.limiter.in_flight(HOST), 1, "freed while the PBX may work");
    tokio::time::sleep(TIMEOUT + Duration::from_millis(10)).await;
    assert_eq!(f.limiter.in_flight(HOST), 0);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_token_request_holds_its_host_slot_for_the_grace() {
    let f = fixture(Answer::Hang);
    let call = {
        let tokens = f.tokens.clone();
        tokio::spawn(async move { tokens.client_credentials(&base(), &app()).await.map(|_| ()) })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(f.limiter.in_flight(HOST), 1);
    call.abort();
    let _ = call.await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(f.limiter.in_flight(HOST), 1, "freed by the cancel");
    tokio::time::sleep(TIMEOUT).await;
    assert_eq!(f.limiter.in_flight(HOST), 0);
}

#[tokio::test(start_paused = true)]
async fn an_answer_or_a_fast_failure_frees_the_slot_at_once() {
    let f = fixture(Answer::Token);
    assert!(exchange(&f).await.is_ok());
    assert_eq!(f.limiter.in_flight(HOST), 0);
    f.pbx.set(Answer::Refused);
    let err = f
        .tokens
        .client_credentials(&base(), &app())
        .await
        .unwrap_err();
    assert_eq!(err.class(), "transient");
    assert_eq!(f.limiter.in_flight(HOST), 0);
    assert!(f.limiter.throttled_until(HOST).is_none());
}

#[tokio::test(start_paused = true)]
async fn a_new_request_timeout_changes_the_grace() {
    let f = fixture(Answer::TimeOut);
    f.tokens.set_request_timeout_ms(5_000);
    assert_eq!(f.tokens.abandon_grace(), Duration::from_secs(5));
    // 1 s to fail is short of the new timeout: not abandoned, freed at once.
    assert!(f.tokens.client_credentials(&base(), &app()).await.is_err());
    assert_eq!(f.limiter.in_flight(HOST), 0);
}

/// Application creation and the user lookup are not token requests: they
/// take no host slot and a 429 on them does not throttle the host (as
/// before the gate existed; onboarding's failure rules handle them).
#[tokio::test(start_paused = true)]
async fn app_creation_and_user_lookup_pass_the_limiter_by() {
    let f = fixture(Answer::Hang);
    let hung = {
        let onboarding = f.onboarding.clone();
        tokio::spawn(async move {
            let bearer = Secret::new("t".to_owned());
            onboarding.create_application(&base(), &bearer, "crm").await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(f.limiter.in_flight(HOST), 0);
    hung.abort();
    f.pbx.set(Answer::Throttle(Duration::from_secs(30)));
    let bearer = Secret::new("t".to_owned());
    let err = f.onboarding.get_user(&base(), &bearer).await.unwrap_err();
    assert!(matches!(err, PbxError::Throttled { .. }), "{err:?}");
    assert!(f.limiter.throttled_until(HOST).is_none());
}
