//! Keeping a runtime's thread running for a short while after it handled something, while a
//! caller of the same process waits for an answer.
//!
//! Waking a thread that sleeps costs tens of microseconds on a virtual machine (its CPU is halted
//! and must be interrupted), and a request and its answer cross threads several times. So while
//! a caller (a driver's or a worker's program) spins for an answer ([`Waiting`]), a core task of
//! the same process that has just handled something keeps its thread running for [`SPIN`],
//! yielding on every turn, so that what comes next finds the thread awake. Spinning costs CPU,
//! which the machine's other threads would use better when nobody waits on a round trip about to
//! end: a daemon alone in its process (`keel head`, `keel node`) never spins, and neither does a
//! process whose callers sleep (a batch being awaited).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a thread that just handled something keeps running before it sleeps (a program's
/// wait for an answer, an idle worker, a daemon's or a driver's core). Waking a sleeping thread
/// costs tens of microseconds on a virtual machine, twice per round trip; what a thread waits for
/// mostly comes within this.
pub const SPIN: Duration = Duration::from_micros(100);

/// While a caller of this process waits ([`Waiting`]), keeps this task's runtime thread running
/// for [`SPIN`] from now or until `ready()`, yielding the CPU to other threads and the runtime to
/// its other tasks on every turn (in a runtime of one thread, as drivers, workers and the
/// embedded cluster have, a turn also polls the runtime's sockets, so that a message arriving
/// meanwhile is read at once). One task per thread spins at a time: a task that calls this while
/// another of its thread spins only moves that spin's end (never more than [`MOST_SPUN`] past
/// its start: the spinning task's own timers wait meanwhile) and returns at once.
pub async fn stay_hot(ready: impl Fn() -> bool) {
    // Work is waiting (the thread is busy anyway), or nobody waits on a round trip.
    if ready() || WAITING.load(Relaxed) == 0 {
        return;
    }
    let state = HOT.with(|h| h.clone());
    state.until.fetch_max(state.nanos() + SPIN.as_nanos() as u64, Relaxed);
    if state.spinning.swap(true, Relaxed) {
        return;
    }
    /// Ends the spin even if the future is dropped, whichever thread it is on by then.
    struct Spinning(Arc<Hot>);
    impl Drop for Spinning {
        fn drop(&mut self) {
            self.0.spinning.store(false, Relaxed);
        }
    }
    let spinning = Spinning(state);
    let most = spinning.0.nanos() + MOST_SPUN.as_nanos() as u64;
    loop {
        let here = HOT.with(|h| Arc::ptr_eq(h, &spinning.0));
        let now = spinning.0.nanos();
        // A task moved to another of the runtime's threads no longer keeps its first one hot.
        if ready() || !here || now >= spinning.0.until.load(Relaxed) || now >= most {
            return;
        }
        std::thread::yield_now();
        tokio::task::yield_now().await;
    }
}

/// The longest one task spins, however often the others of its thread move the end of its spin.
pub const MOST_SPUN: Duration = Duration::from_micros(400);

/// Callers of this process spinning for an answer now.
static WAITING: AtomicUsize = AtomicUsize::new(0);

/// A caller spinning for an answer, while it lives: a round trip someone is waiting on is in
/// flight, and the threads of this process that carry it stay hot ([`stay_hot`]). A caller that
/// goes to sleep (its answer is far off: a long task, a large batch) drops it, and the threads
/// sleep too once their spin ends.
pub struct Waiting(());

impl Waiting {
    /// Starts a wait.
    pub fn start() -> Waiting {
        WAITING.fetch_add(1, Relaxed);
        Waiting(())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        WAITING.fetch_sub(1, Relaxed);
    }
}

/// A thread's spin (see [`stay_hot`]).
struct Hot {
    spinning: AtomicBool,
    /// Until when, in nanoseconds since `start`.
    until: AtomicU64,
    start: Instant,
}

impl Hot {
    fn nanos(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

thread_local! {
    static HOT: Arc<Hot> = Arc::new(Hot {
        spinning: AtomicBool::new(false),
        until: AtomicU64::new(0),
        start: Instant::now(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    /// Serialises the tests: the count of waiting callers is the process's.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
        ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many times `ready` was asked during one call: once when it did not spin.
    async fn turns_of_one_call() -> usize {
        let turns = AtomicUsize::new(0);
        stay_hot(|| {
            turns.fetch_add(1, Relaxed);
            false
        })
        .await;
        turns.load(Relaxed)
    }

    #[test]
    fn threads_spin_only_while_a_caller_waits() {
        let _serial = one_at_a_time();
        runtime().block_on(async {
            assert_eq!(turns_of_one_call().await, 1, "spun with nobody waiting");
            let waiting = Waiting::start();
            let start = Instant::now();
            assert!(turns_of_one_call().await > 1, "did not spin while a caller waited");
            assert!(start.elapsed() >= SPIN, "the spin ended early");
            drop(waiting);
            assert_eq!(turns_of_one_call().await, 1, "spun once the caller stopped waiting");
        });
    }

    #[test]
    fn a_spin_ends_at_once_when_ready() {
        let _serial = one_at_a_time();
        let _waiting = Waiting::start();
        runtime().block_on(async {
            let turns = AtomicUsize::new(0);
            stay_hot(|| turns.fetch_add(1, Relaxed) == 2).await;
            assert_eq!(turns.load(Relaxed), 3, "the spin went on once ready");
        });
    }

    #[test]
    fn one_task_spins_per_thread_and_the_others_move_the_end_of_its_spin_within_a_bound() {
        let _serial = one_at_a_time();
        let _waiting = Waiting::start();
        runtime().block_on(async {
            let first = tokio::spawn(stay_hot(|| false));
            // The first is spinning (this task runs between its turns).
            tokio::task::yield_now().await;
            let hot = HOT.with(|h| h.clone());
            assert!(hot.spinning.load(Relaxed), "the first task is not spinning");
            let end = hot.until.load(Relaxed);
            assert_eq!(turns_of_one_call().await, 1, "a second task spun too");
            assert!(hot.until.load(Relaxed) > end, "a later call did not move the end of the spin");
            // A busy neighbour keeps moving it: the spin still ends, and the first task gets back
            // to its own timers.
            let start = Instant::now();
            while start.elapsed() < 3 * MOST_SPUN && !first.is_finished() {
                assert_eq!(turns_of_one_call().await, 1);
                tokio::task::yield_now().await;
            }
            assert!(first.is_finished(), "neighbours kept a spin going past its bound");
            assert!(!hot.spinning.load(Relaxed), "the spin ended but the thread is still marked");
        });
    }

    #[test]
    fn a_spin_dropped_midway_lets_the_next_call_spin() {
        let _serial = one_at_a_time();
        let _waiting = Waiting::start();
        runtime().block_on(async {
            let mut spin = Box::pin(stay_hot(|| false));
            let first = std::future::poll_fn(|cx| std::task::Poll::Ready(spin.as_mut().poll(cx))).await;
            assert!(first.is_pending(), "the spin ended at its first turn");
            drop(spin);
            assert!(turns_of_one_call().await > 1, "the dropped spin left its thread marked as spinning");
        });
    }
}
