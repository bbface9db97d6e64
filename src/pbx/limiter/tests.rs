//! Tests for `limiter/mod.rs`, on tokio's paused clock.
use std::sync::atomic::AtomicUsize;

use super::*;
use crate::clock::TokioClock;

const T0: UnixMs = UnixMs(1_700_000_000_000);

fn limiters(rps: u32, concurrent: u32) -> (Arc<HostLimiters>, SharedClock) {
    let clock: SharedClock = Arc::new(TokioClock::starting_at(T0));
    (
        Arc::new(HostLimiters::new(Arc::clone(&clock), rps, concurrent)),
        clock,
    )
}

/// Runs `n` acquisitions on `host`, each holding its permit for `hold`;
/// returns the start times and the highest concurrency seen.
async fn run(
    lim: &Arc<HostLimiters>,
    clock: &SharedClock,
    host: &'static str,
    n: usize,
    hold: Duration,
) -> (Vec<UnixMs>, usize) {
    let out = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (lim, clock, out, peak) = (
            Arc::clone(lim),
            Arc::clone(clock),
            Arc::clone(&out),
            Arc::clone(&peak),
        );
        tasks.push(tokio::spawn(async move {
            let permit = lim.acquire(host).await.unwrap();
            let started = clock.now();
            let now_out = out.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now_out, Ordering::SeqCst);
            tokio::time::sleep(hold).await;
            out.fetch_sub(1, Ordering::SeqCst);
            drop(permit);
            started
        }));
    }
    let mut starts = Vec::new();
    for t in tasks {
        starts.push(t.await.unwrap());
    }
    starts.sort();
    (starts, peak.load(Ordering::SeqCst))
}

/// The most starts in any half-open window [t, t + 1000 ms).
fn max_in_window(starts: &[UnixMs]) -> usize {
    starts
        .iter()
        .map(|s| {
            starts
                .iter()
                .filter(|t| t.0 >= s.0 && t.0 < s.0 + 1000)
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test(start_paused = true)]
async fn sliding_window_and_concurrency_hold() {
    let (lim, clock) = limiters(20, 6);
    // Short holds: the window is the binding limit.
    let (starts, peak) = run(
        &lim,
        &clock,
        "pbx.example.com",
        100,
        Duration::from_millis(50),
    )
    .await;
    assert_eq!(starts.len(), 100);
    assert!(max_in_window(&starts) <= 20, "{}", max_in_window(&starts));
    assert!(peak <= 6, "{peak}");
    // No dawdling either: 100 starts at 20/s need about 4 s, not much more.
    let span = starts[99].0 - starts[0].0;
    assert!((4000..5000).contains(&span), "{span}");
    // The first 6 get a slot and a window place at once; the others wait.
    assert_eq!(lim.waits_total("pbx.example.com"), 94);
    assert_eq!(lim.in_flight("pbx.example.com"), 0);

    // Long holds: concurrency is the binding limit.
    let (starts, peak) = run(
        &lim,
        &clock,
        "slow.example.com",
        30,
        Duration::from_millis(2000),
    )
    .await;
    assert_eq!(peak, 6);
    assert!(max_in_window(&starts) <= 6);
}

#[tokio::test(start_paused = true)]
async fn hosts_do_not_block_each_other() {
    let (lim, clock) = limiters(2, 1);
    let _held = lim.acquire("a").await.unwrap();
    // "a" has no slot left, "b" is untouched and admits at once.
    let t = clock.now();
    let b = tokio::time::timeout(Duration::from_millis(1), lim.acquire("b")).await;
    assert!(b.is_ok());
    assert_eq!(clock.now(), t);
    let a = tokio::time::timeout(Duration::from_secs(10), lim.acquire("a")).await;
    assert!(a.is_err(), "a must still be blocked by its held permit");
    assert_eq!(lim.hosts(), vec!["a".to_owned(), "b".to_owned()]);
}

#[tokio::test(start_paused = true)]
async fn throttled_host_fails_fast_until_the_time_passes() {
    let (lim, clock) = limiters(20, 6);
    let until = clock.now().plus(Duration::from_secs(30));
    lim.throttle("h", until);
    assert_eq!(lim.throttled_until("h"), Some(until));
    assert_eq!(lim.throttled_until("other"), None);
    let t = clock.now();
    assert_eq!(lim.acquire("h").await.unwrap_err(), Throttled { until });
    assert_eq!(clock.now(), t, "no waiting while throttled");
    // A shorter throttle does not shorten it.
    lim.throttle("h", clock.now().plus(Duration::from_secs(5)));
    assert_eq!(lim.throttled_until("h"), Some(until));
    assert!(lim.acquire("other").await.is_ok());

    tokio::time::sleep(Duration::from_secs(29)).await;
    assert!(lim.acquire("h").await.is_err());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(lim.throttled_until("h"), None);
    assert!(lim.acquire("h").await.is_ok());

    let until = lim.throttle_for("h", Duration::from_secs(60));
    assert_eq!(until, clock.now().plus(Duration::from_secs(60)));
    assert_eq!(lim.throttled_until("h"), Some(until));
    lim.clear_throttle("h");
    assert!(lim.acquire("h").await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn waiter_sees_a_throttle_set_while_it_waits() {
    let (lim, clock) = limiters(1, 6);
    let _first = lim.acquire("h").await.unwrap();
    let lim2 = Arc::clone(&lim);
    let waiter = tokio::spawn(async move { lim2.acquire("h").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let until = clock.now().plus(Duration::from_secs(60));
    lim.throttle("h", until);
    assert_eq!(waiter.await.unwrap(), Err(Throttled { until }));
    assert_eq!(lim.in_flight("h"), 1);
}

#[tokio::test(start_paused = true)]
async fn reconfigure_applies_to_new_acquisitions() {
    let (lim, clock) = limiters(100, 4);
    let held: Vec<_> = [
        lim.acquire("h").await,
        lim.acquire("h").await,
        lim.acquire("h").await,
    ]
    .into_iter()
    .map(Result::unwrap)
    .collect();
    assert_eq!(lim.in_flight("h"), 3);
    // Shrink below what is out: nothing new until enough come back.
    lim.reconfigure(100, 2);
    assert!(
        tokio::time::timeout(Duration::from_secs(1), lim.acquire("h"))
            .await
            .is_err()
    );
    let mut held = held;
    held.pop();
    assert!(
        tokio::time::timeout(Duration::from_secs(1), lim.acquire("h"))
            .await
            .is_err()
    );
    held.pop();
    let third = tokio::time::timeout(Duration::from_secs(1), lim.acquire("h")).await;
    assert!(third.is_ok());
    assert_eq!(lim.in_flight("h"), 2);
    drop(third);
    drop(held);
    assert_eq!(lim.in_flight("h"), 0);
    // Grow: 5 at once now.
    lim.reconfigure(100, 5);
    let mut five = Vec::new();
    for _ in 0..5 {
        five.push(
            tokio::time::timeout(Duration::from_millis(1), lim.acquire("h"))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert!(
        tokio::time::timeout(Duration::from_secs(1), lim.acquire("h"))
            .await
            .is_err()
    );
    drop(five);

    // A lower rate holds from the next acquisition on.
    tokio::time::sleep(Duration::from_secs(2)).await;
    lim.reconfigure(3, 5);
    let (starts, _) = run(&lim, &clock, "h", 12, Duration::from_millis(1)).await;
    assert!(max_in_window(&starts) <= 3);
}

#[tokio::test(start_paused = true)]
async fn cancelled_acquire_records_nothing() {
    let (lim, _clock) = limiters(1, 1);
    let first = lim.acquire("h").await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(10), lim.acquire("h"))
            .await
            .is_err()
    );
    drop(first);
    assert_eq!(lim.in_flight("h"), 0);
    // The window still holds only the first start; one window (1 s plus the
    // arrival guard) after it a place frees.
    let t = tokio::time::Instant::now();
    let _second = lim.acquire("h").await.unwrap();
    assert_eq!(
        t.elapsed(),
        Duration::from_millis(990 + super::WINDOW_GUARD_MS as u64)
    );
}

/// Spawns one acquisition in `lane` that holds its permit for `hold` and
/// returns its start time.
fn spawn_in(
    lim: &Arc<HostLimiters>,
    clock: &SharedClock,
    lane: Lane,
    hold: Duration,
) -> tokio::task::JoinHandle<UnixMs> {
    let (lim, clock) = (Arc::clone(lim), Arc::clone(clock));
    tokio::spawn(async move {
        let permit = lim.acquire_in("h", lane).await.unwrap();
        let started = clock.now();
        tokio::time::sleep(hold).await;
        drop(permit);
        started
    })
}

/// A demand request that arrives behind a proactive backlog takes the next
/// free place in the window; the window still holds for both lanes.
#[tokio::test(start_paused = true)]
async fn demand_goes_before_a_queued_proactive_backlog() {
    let (lim, clock) = limiters(2, 6);
    let hold = Duration::from_millis(50);
    let proactive: Vec<_> = (0..10)
        .map(|_| spawn_in(&lim, &clock, Lane::Proactive, hold))
        .collect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let demand = spawn_in(&lim, &clock, Lane::Demand, hold);
    let demand_start = demand.await.unwrap();
    let mut starts = vec![demand_start];
    for p in proactive {
        starts.push(p.await.unwrap());
    }
    starts.sort();
    assert_eq!(demand_start, T0.plus_ms(WINDOW_MS), "{starts:?}");
    let before = starts.iter().filter(|s| **s < demand_start).count();
    assert_eq!(before, 2, "only the two that started at once went first");
    assert!(max_in_window(&starts) <= 2, "{starts:?}");
    assert_eq!(lim.demand_waiting("h"), 0);
}

/// Proactive requests that hold every concurrency slot while they wait for
/// the window give their slots up to a demand request; one already sent
/// keeps its slot.
#[tokio::test(start_paused = true)]
async fn proactive_waiters_give_their_slots_to_demand() {
    let (lim, clock) = limiters(1, 2);
    // Sent at T0 and in flight for 5 s: keeps its slot.
    let sent = spawn_in(&lim, &clock, Lane::Proactive, Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(1)).await;
    // Takes the second slot and waits for the window.
    let waiting = spawn_in(&lim, &clock, Lane::Proactive, Duration::from_millis(10));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(lim.in_flight("h"), 2);
    let demand = spawn_in(&lim, &clock, Lane::Demand, Duration::from_millis(10));
    let demand_start = demand.await.unwrap();
    assert_eq!(sent.await.unwrap(), T0);
    assert_eq!(demand_start, T0.plus_ms(WINDOW_MS));
    assert!(waiting.await.unwrap() >= demand_start.plus_ms(WINDOW_MS));
}

/// `acquire` is the demand lane; a proactive acquisition with no demand
/// waiting behaves as before.
#[tokio::test(start_paused = true)]
async fn proactive_alone_is_not_slowed() {
    let (lim, clock) = limiters(2, 6);
    let a = spawn_in(&lim, &clock, Lane::Proactive, Duration::ZERO);
    let b = spawn_in(&lim, &clock, Lane::Proactive, Duration::ZERO);
    assert_eq!(a.await.unwrap(), T0);
    assert_eq!(b.await.unwrap(), T0);
    assert_eq!(lim.waits_total("h"), 0);
}
