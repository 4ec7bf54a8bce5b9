//! Keeping a runtime's thread running for a short while after it handled something.
//!
//! Waking a thread that sleeps costs tens of microseconds on a virtual machine (its CPU is halted
//! and must be interrupted), and a request and its answer cross threads several times. A core
//! task that has just handled something therefore keeps its thread running for [`SPIN`], yielding
//! on every turn, so that what comes next finds the thread awake. That costs CPU, which other
//! threads of a busy machine would use better: in a process with callers (a driver's or a
//! worker's program), threads spin only while a caller itself spins for an answer ([`Waiting`]),
//! that is, while someone waits on a round trip that is about to end.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a thread that just handled something keeps running before it sleeps (a program's
/// wait for an answer, an idle worker, a daemon's or a driver's core). Waking a sleeping thread
/// costs tens of microseconds on a virtual machine, twice per round trip; what a thread waits for
/// mostly comes within this.
pub const SPIN: Duration = Duration::from_micros(100);

/// Keeps this task's runtime thread running for [`SPIN`] from now, yielding the CPU to other
/// threads and the runtime to its other tasks on every turn (a turn also polls the runtime's
/// sockets, so that a message arriving meanwhile is read at once, with no wake-up). One task per
/// thread spins at a time: the others, and this one, stop awaiting this once `ready()` or once
/// the thread's last call's [`SPIN`] has passed. A task that calls this while another of its
/// thread spins only moves that deadline and returns at once.
pub async fn stay_hot(ready: impl Fn() -> bool) {
    // Work is waiting: the thread is busy anyway, and the next call moves the deadline.
    if ready() {
        return;
    }
    // Spinning trades CPU for latency: in a process with callers, only while one waits.
    if gate(|g| g.callers.load(Relaxed) && g.waiting.load(Relaxed) == 0) {
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
    loop {
        let here = HOT.with(|h| Arc::ptr_eq(h, &spinning.0));
        // A task moved to another of the runtime's threads no longer keeps its first one hot.
        if ready() || !here || spinning.0.nanos() >= spinning.0.until.load(Relaxed) {
            return;
        }
        std::thread::yield_now();
        tokio::task::yield_now().await;
    }
}

/// When a process's threads may spin.
#[derive(Default)]
struct Gate {
    /// Whether this process has callers (a driver's or a worker's program): then its threads stay
    /// hot only while one of them waits for an answer ([`Waiting`]). A daemon alone in its
    /// process always does.
    callers: AtomicBool,
    /// Callers of this process spinning for an answer now.
    waiting: AtomicUsize,
}

#[cfg(not(test))]
fn gate<T>(f: impl FnOnce(&Gate) -> T) -> T {
    static GATE: Gate = Gate { callers: AtomicBool::new(false), waiting: AtomicUsize::new(0) };
    f(&GATE)
}

/// Tests run side by side in one process: each thread has its own gate.
#[cfg(test)]
fn gate<T>(f: impl FnOnce(&Gate) -> T) -> T {
    thread_local! {
        static GATE: Gate = Gate::default();
    }
    GATE.with(f)
}

/// Says that this process has callers (see [`Waiting`]).
pub fn has_callers() {
    gate(|g| g.callers.store(true, Relaxed));
}

/// A caller spinning for an answer, while it lives: a round trip someone is waiting on is in
/// flight, and the threads that carry it stay hot ([`stay_hot`]). A caller that goes to sleep
/// (its answer is far off: a long task, a large batch) drops it, and the threads sleep too once
/// their spin ends.
pub struct Waiting(());

impl Waiting {
    /// Starts a wait.
    pub fn start() -> Waiting {
        gate(|g| g.waiting.fetch_add(1, Relaxed));
        Waiting(())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        gate(|g| g.waiting.fetch_sub(1, Relaxed));
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
    use std::sync::atomic::AtomicUsize;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[test]
    fn a_spin_ends_at_once_when_ready_and_after_spin_when_not() {
        runtime().block_on(async {
            stay_hot(|| true).await;
            let turns = AtomicUsize::new(0);
            stay_hot(|| turns.fetch_add(1, Relaxed) == 2).await;
            assert_eq!(turns.load(Relaxed), 3, "the spin went on once ready");
            let start = Instant::now();
            stay_hot(|| false).await;
            assert!(start.elapsed() >= SPIN, "a spin ended early");
        });
    }

    #[test]
    fn one_task_spins_per_thread_and_the_others_move_its_deadline() {
        runtime().block_on(async {
            let first = tokio::spawn(async {
                let start = Instant::now();
                stay_hot(|| false).await;
                start.elapsed()
            });
            // The first is spinning (this task runs between its turns).
            tokio::task::yield_now().await;
            let hot = HOT.with(|h| h.clone());
            assert!(hot.spinning.load(Relaxed), "the first task is not spinning");
            let deadline = hot.until.load(Relaxed);
            let turns = AtomicUsize::new(0);
            stay_hot(|| turns.fetch_add(1, Relaxed) == usize::MAX).await;
            assert_eq!(turns.load(Relaxed), 1, "a second task spun too");
            assert!(hot.until.load(Relaxed) > deadline, "a later call did not move the spinner's deadline");
            assert!(first.await.unwrap() >= SPIN, "the spinner stopped early");
            assert!(!hot.spinning.load(Relaxed), "the spin ended but the thread is still marked");
        });
    }

    #[test]
    fn in_a_process_with_callers_threads_spin_only_while_a_caller_waits() {
        runtime().block_on(async {
            has_callers();
            let turns = AtomicUsize::new(0);
            stay_hot(|| turns.fetch_add(1, Relaxed) == usize::MAX).await;
            assert_eq!(turns.swap(0, Relaxed), 1, "spun with nobody waiting");
            let waiting = Waiting::start();
            let start = Instant::now();
            stay_hot(|| false).await;
            assert!(start.elapsed() >= SPIN, "did not spin while a caller waited");
            drop(waiting);
            stay_hot(|| turns.fetch_add(1, Relaxed) == usize::MAX).await;
            assert_eq!(turns.load(Relaxed), 1, "spun once the caller stopped waiting");
        });
    }

    #[test]
    fn a_spin_dropped_midway_lets_the_next_call_spin() {
        runtime().block_on(async {
            let mut spin = Box::pin(stay_hot(|| false));
            let first = std::future::poll_fn(|cx| std::task::Poll::Ready(spin.as_mut().poll(cx))).await;
            assert!(first.is_pending(), "the spin ended at its first turn");
            drop(spin);
            tokio::time::sleep(SPIN).await;
            let start = Instant::now();
            stay_hot(|| false).await;
            assert!(start.elapsed() >= SPIN, "the dropped spin left its thread marked as spinning");
        });
    }
}
