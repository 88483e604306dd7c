//! [`PollAgain`]: a future that wakes itself while it is being polled is polled again at once,
//! in the same turn, instead of handing that wake to the async runtime.
//!
//! Why nimbus needs it: hyper's HTTP/1 connection task passes a request body to the service
//! through a channel, and the service is polled inside that same task. Taking a chunk from the
//! channel wakes the sender, that is the connection task itself, while it runs. tokio's
//! multi-thread scheduler treats a wake during a poll as a yield: the task goes to the back of
//! the run queue and an idle worker is unparked to steal it. On the 2-vCPU VMs nimbus is
//! benchmarked on, unparking a worker on an idle vCPU costs tens of microseconds, so every
//! request with a body (each answer a runtime posts to the Runtime API, each Invoke API call,
//! each S3 PUT) paid one cross-CPU wake-up and usually a task migration. Measured on a Node
//! function at c=1: 3.6 context switches of nimbus's workers per invocation, 2.1 without the
//! self-wake. No crate offers this and hyper has no setting for it; it is ~100 lines over
//! `std::task::Wake`.
//!
//! A wake that comes from anywhere else (the I/O driver, another task, another thread) while
//! the future is not being polled goes to the runtime's waker as usual. A future that keeps
//! waking itself is polled at most [`MAX_AGAIN`] extra times per turn; then the wake goes to
//! the runtime, so a deliberate yield (hyper yields after 16 rounds of its own loop) still
//! lets other tasks run.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

/// How many extra polls one turn may take before a self-wake goes to the runtime.
pub const MAX_AGAIN: usize = 8;

/// Not being polled: a wake goes to the runtime.
const IDLE: u8 = 0;
/// Being polled: a wake is noted and the poll runs again.
const POLLING: u8 = 1;
/// Being polled and woken meanwhile.
const WOKEN: u8 = 2;

/// Wraps `inner` (boxed, so that futures that are not `Unpin` fit too); see the module docs.
pub struct PollAgain<F> {
    inner: Pin<Box<F>>,
    relay: Arc<Relay>,
    waker: Waker,
}

/// What the inner future holds as its waker.
struct Relay {
    state: AtomicU8,
    /// The runtime's waker of the task, as of its latest poll.
    outer: Mutex<Option<Waker>>,
}

impl<F: Future> PollAgain<F> {
    pub fn new(inner: F) -> PollAgain<F> {
        let relay = Arc::new(Relay { state: AtomicU8::new(IDLE), outer: Mutex::new(None) });
        let waker = Waker::from(relay.clone());
        PollAgain { inner: Box::pin(inner), relay, waker }
    }
}

impl Wake for Relay {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        match self.state.compare_exchange(POLLING, WOKEN, Ordering::AcqRel, Ordering::Acquire) {
            // Being polled: the poll loop runs the future again.
            Ok(_) | Err(WOKEN) => {}
            Err(_) => {
                let outer = self.outer.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(w) = outer.as_ref() {
                    w.wake_by_ref();
                }
            }
        }
    }
}

impl<F: Future> Future for PollAgain<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        {
            let mut outer = this.relay.outer.lock().unwrap_or_else(PoisonError::into_inner);
            if !outer.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *outer = Some(cx.waker().clone());
            }
        }
        let mut inner_cx = Context::from_waker(&this.waker);
        for _ in 0..=MAX_AGAIN {
            this.relay.state.store(POLLING, Ordering::Release);
            if let Poll::Ready(out) = this.inner.as_mut().poll(&mut inner_cx) {
                this.relay.state.store(IDLE, Ordering::Release);
                return Poll::Ready(out);
            }
            if this.relay.state.compare_exchange(POLLING, IDLE, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                return Poll::Pending;
            }
        }
        // Still waking itself: let the runtime schedule it like any yield.
        this.relay.state.store(IDLE, Ordering::Release);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts the wakes the runtime would get.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Count {
        fn get(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    /// Wakes itself `times` times during its polls, then completes with how often it was polled.
    struct SelfWaking {
        times: usize,
        polls: usize,
    }

    impl Future for SelfWaking {
        type Output = usize;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            self.polls += 1;
            if self.times == 0 {
                return Poll::Ready(self.polls);
            }
            self.times -= 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    fn runtime_waker() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count::default());
        (count.clone(), Waker::from(count))
    }

    #[test]
    fn a_future_that_wakes_itself_runs_again_in_the_same_turn() {
        let (count, waker) = runtime_waker();
        let mut cx = Context::from_waker(&waker);
        let mut f = PollAgain::new(SelfWaking { times: 3, polls: 0 });
        assert_eq!(Pin::new(&mut f).poll(&mut cx), Poll::Ready(4));
        assert_eq!(count.get(), 0, "the runtime was never asked to poll it again");

        // Unwrapped, the same future needs the runtime for every self-wake.
        let mut bare = SelfWaking { times: 3, polls: 0 };
        assert!(Pin::new(&mut bare).poll(&mut cx).is_pending());
        assert_eq!(count.get(), 1);
    }

    #[test]
    fn a_future_that_keeps_waking_itself_yields_to_the_runtime() {
        let (count, waker) = runtime_waker();
        let mut cx = Context::from_waker(&waker);
        let mut f = PollAgain::new(SelfWaking { times: 100, polls: 0 });
        assert!(Pin::new(&mut f).poll(&mut cx).is_pending());
        assert_eq!(f.inner.polls, MAX_AGAIN + 1);
        assert_eq!(count.get(), 1, "the runtime gets one wake, as for any yield");
    }

    /// Pending until its flag is set; keeps the waker it was polled with.
    struct Gate {
        open: Arc<std::sync::atomic::AtomicBool>,
        waker: Arc<Mutex<Option<Waker>>>,
    }

    impl Future for Gate {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.open.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[test]
    fn a_wake_from_elsewhere_reaches_the_runtime_waker_of_the_latest_poll() {
        let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let held = Arc::new(Mutex::new(None::<Waker>));
        let mut f = PollAgain::new(Gate { open: open.clone(), waker: held.clone() });
        let (first, waker1) = runtime_waker();
        assert!(Pin::new(&mut f).poll(&mut Context::from_waker(&waker1)).is_pending());
        // The task moved (a new runtime waker): the wake must go to the new one.
        let (second, waker2) = runtime_waker();
        assert!(Pin::new(&mut f).poll(&mut Context::from_waker(&waker2)).is_pending());

        open.store(true, Ordering::SeqCst);
        let w = held.lock().unwrap().take().unwrap();
        std::thread::spawn(move || w.wake()).join().unwrap();
        assert_eq!((first.get(), second.get()), (0, 1));
        assert_eq!(Pin::new(&mut f).poll(&mut Context::from_waker(&waker2)), Poll::Ready(()));
    }
}
