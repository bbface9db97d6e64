//! The LISTEN side of the change feed: one connection of its own (never a
//! pooled one: tokio-postgres hands notifications out only through
//! `Connection::poll_message`, and the pool's connection task drops them),
//! kept connected for as long as someone holds the receiver, reconnecting
//! with backoff. Every (re)connect is announced as [`Hint::Connected`]
//! (notifications sent while it was down are gone: the reader must read
//! the feed), every notification as [`Hint::Notified`] (coalesced when the
//! reader is behind: a hint means "read the feed", not "one row"), and the
//! first failure of an outage as [`Hint::Disconnected`] (for the
//! listener-connected metric).
//!
//! The connection names itself `pbx-tokend-listen` (application_name), so
//! an operator, or a test, can find it in `pg_stat_activity`.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, Config, Connection};

use crate::store::Hint;

/// The channel the triggers notify.
pub(super) const CHANNEL: &str = "pbx_tokend_changes";

/// What the listener connects with (the store's URL and TLS choice).
pub(super) struct ListenConfig {
    pub(super) cfg: Config,
    pub(super) tls: bool,
    pub(super) root_cert: Option<String>,
}

/// Starts the listener; it stops when the receiver is dropped.
pub(super) fn spawn(lc: Arc<ListenConfig>) -> mpsc::Receiver<Hint> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        let mut failures = 0u32;
        loop {
            match session(&lc, &tx, &mut failures).await {
                Ok(()) => return,
                // Once per outage: a database that is gone for a while
                // would otherwise log every few seconds.
                Err(e) if failures == 0 => tracing::warn!(
                    "the change-feed listener lost its PostgreSQL connection ({e}); changes made on other replicas are read by polling until it is back"
                ),
                Err(e) => tracing::debug!(failures, "change-feed listener still down: {e}"),
            }
            if failures == 0 && tx.send(Hint::Disconnected).await.is_err() {
                return;
            }
            failures += 1;
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = tx.closed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    });
    rx
}

/// One connection's life. `Ok` when the receiver went away.
async fn session(
    lc: &ListenConfig,
    tx: &mpsc::Sender<Hint>,
    failures: &mut u32,
) -> Result<(), String> {
    let mut cfg = lc.cfg.clone();
    cfg.application_name("pbx-tokend-listen");
    if lc.tls {
        let tls =
            super::connect::rustls_config(lc.root_cert.as_deref()).map_err(|e| e.to_string())?;
        let connector = tokio_postgres_rustls::MakeRustlsConnect::new(tls);
        let (client, conn) = cfg.connect(connector).await.map_err(|e| e.to_string())?;
        run(client, conn, tx, failures).await
    } else {
        let (client, conn) = cfg
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| e.to_string())?;
        run(client, conn, tx, failures).await
    }
}

async fn run<S, T>(
    client: Client,
    mut conn: Connection<S, T>,
    tx: &mpsc::Sender<Hint>,
    failures: &mut u32,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (note_tx, mut note_rx) = mpsc::unbounded_channel::<()>();
    // Drives the connection (it must be polled for any query to make
    // progress) and forwards notifications.
    let mut driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => {
                    let _ = note_tx.send(());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return e.to_string(),
                None => return "closed by the server".to_owned(),
            }
        }
    });
    let sql = format!("LISTEN {CHANNEL}");
    let listen = client.batch_execute(&sql);
    let listened = tokio::select! {
        r = listen => r.map_err(|e| e.to_string()),
        r = &mut driver => Err(r.unwrap_or_else(|e| e.to_string())),
    };
    if let Err(e) = listened {
        driver.abort();
        return Err(e);
    }
    if *failures > 0 {
        tracing::info!("the change-feed listener is connected again");
    }
    // Connected and listening: the next loss is a new outage.
    *failures = 0;
    if tx.send(Hint::Connected).await.is_err() {
        driver.abort();
        return Ok(());
    }
    loop {
        tokio::select! {
            note = note_rx.recv() => match note {
                Some(()) => {
                    // Full: the reader has hints queued and reads the
                    // whole feed on each; this one adds nothing.
                    if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(Hint::Notified) {
                        driver.abort();
                        return Ok(());
                    }
                }
                None => break,
            },
            _ = tx.closed() => {
                driver.abort();
                return Ok(());
            }
        }
    }
    drop(client);
    Err(driver.await.unwrap_or_else(|e| e.to_string()))
}
