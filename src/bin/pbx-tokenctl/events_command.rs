//! `pbx-tokenctl events`: tenant events from AdminService.WatchTenantEvents,
//! one line each (id, time, tenant, kind, previous -> state, message), or
//! one JSON object per line with --json. Without --follow it asks the
//! daemon to end the stream once every stored event was sent; with
//! --follow it keeps printing, and when the connection drops (or the
//! daemon restarts) it reconnects with the last event id seen, so nothing
//! is missed or printed twice.

use std::time::Duration;

use anyhow::Result;
use serde_json::{json, Value};
use tonic::{Code, Status};

use pbx_tokend::proto;

use crate::cli::EventsArgs;
use crate::commands::emit;
use crate::display;
use crate::Ctx;

/// Waits between reconnection attempts: 1 s, doubling up to 30 s.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

pub fn event_line(e: &proto::TenantEvent) -> String {
    let at =
        e.at.as_ref()
            .map_or_else(|| "-".to_owned(), display::rfc3339_secs);
    let states = match (e.previous_state, e.state) {
        (0, 0) => "-".to_owned(),
        (0, s) => display::state_name(s),
        (p, s) => format!("{} -> {}", display::state_name(p), display::state_name(s)),
    };
    format!(
        "{}  {}  {}  {}  {}  {}\n",
        e.event_id,
        at,
        e.tenant_id,
        display::event_kind_name(e.kind),
        states,
        display::or_dash(&e.message),
    )
}

pub fn event_json(e: &proto::TenantEvent) -> Value {
    let state = |s: i32| (s != 0).then(|| display::state_name(s));
    json!({
        "event_id": e.event_id,
        "tenant_id": e.tenant_id,
        "kind": display::event_kind_name(e.kind),
        "previous_state": state(e.previous_state),
        "state": state(e.state),
        "message": e.message,
        "at": display::ts_json(e.at.as_ref()),
    })
}

/// Errors after which trying again may work: the daemon is restarting,
/// draining, or the network dropped.
fn retryable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Aborted
    )
}

pub async fn events(ctx: &Ctx, a: EventsArgs) -> Result<()> {
    let mut after = a.after;
    let mut wait = RETRY_FIRST;
    loop {
        match stream_once(ctx, &a, &mut after).await {
            Ok(()) if !a.follow => return Ok(()),
            Ok(()) => eprintln!("the daemon ended the stream; reconnecting after event {after}"),
            Err(s) if a.follow && retryable(&s) => {
                eprintln!(
                    "stream interrupted ({}); reconnecting after event {after} in {}s",
                    s.message(),
                    wait.as_secs()
                );
            }
            Err(s) => return Err(s.into()),
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(RETRY_MAX);
    }
}

/// One call: prints events until the stream ends (Ok) or fails; `after`
/// follows the last event printed.
async fn stream_once(ctx: &Ctx, a: &EventsArgs, after: &mut i64) -> Result<(), Status> {
    let req = proto::WatchTenantEventsRequest {
        tenant_pattern: a.tenant.clone().unwrap_or_default(),
        after_event_id: *after,
        stop_at_end: !a.follow,
    };
    // A deadline only for the listing: a followed stream lives until
    // Ctrl-C or the daemon ends it.
    let request = if a.follow {
        tonic::Request::new(req)
    } else {
        ctx.request(req)
    };
    let mut stream = ctx.admin().watch_tenant_events(request).await?.into_inner();
    loop {
        let item = tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            item = stream.message() => item?,
        };
        let Some(e) = item else { return Ok(()) };
        let line = if ctx.json {
            format!("{}\n", event_json(&e))
        } else {
            event_line(&e)
        };
        emit(&line).map_err(|e| Status::internal(format!("cannot write: {e}")))?;
        *after = e.event_id;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_json() {
        let e = proto::TenantEvent {
            event_id: 42,
            tenant_id: "acme".into(),
            kind: proto::TenantEventKind::StateChanged as i32,
            previous_state: proto::TenantState::Active as i32,
            state: proto::TenantState::CredentialsRejected as i32,
            message: "the PBX rejected the credentials".into(),
            at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
        };
        let line = event_line(&e);
        assert!(line.starts_with("42  2023-11-14T22:13:20Z  acme  state_changed  active -> credentials_rejected  the PBX rejected"), "{line}");
        let j = event_json(&e);
        assert_eq!(j["kind"], "state_changed");
        assert_eq!(j["previous_state"], "active");
        let created = proto::TenantEvent {
            kind: proto::TenantEventKind::Created as i32,
            previous_state: 0,
            ..e
        };
        assert!(event_line(&created).contains("  created  credentials_rejected  "));
        assert_eq!(event_json(&created)["previous_state"], Value::Null);
    }
}
