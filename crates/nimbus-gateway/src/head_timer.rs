//! [`HeadTimer`]: hyper's header read timeout with one timer entry per connection, not one per
//! request.
//!
//! On HTTP/1.1 hyper starts the header read timeout whenever it waits for a request head (a
//! keep-alive connection waits for the next one after every answer, so the timeout also closes
//! idle connections) and drops it once the head is read. With `hyper_util`'s `TokioTimer` every
//! request so made a new tokio sleep, put it into the timer wheel and took it out again
//! (turning the timeout off gained 4.8 % on a warm wasm hello at c=32; this timer gained 1.5 %:
//! BENCHMARKS.md). The deadline only ever moves later on a connection (now + the timeout), so
//! this timer keeps one tokio sleep per connection, registered at the earliest deadline it was
//! asked for, and only notes later deadlines. When the sleep fires before the deadline now
//! asked for, it is moved there: one timer-wheel operation per connection per timeout period,
//! and a head that never comes still closes the connection at its own deadline. A sleep that
//! fires while no head is awaited wakes the connection's task once, for nothing. No crate
//! offers this; hyper's `Timer` trait is the seam for it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};

/// The timer of one connection (its `http1::Builder` gets a new one per connection).
#[derive(Default)]
pub(crate) struct HeadTimer {
    /// The one tokio sleep of the connection, made on its first wait for a head.
    sleep: Arc<Mutex<Option<Pin<Box<tokio::time::Sleep>>>>>,
}

impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(HeadWait { sleep: self.sleep.clone(), deadline })
    }

    /// tokio's clock (the same as the system's, except in tests with paused time).
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}

/// One wait for a head, as hyper holds it: ready once its deadline has passed.
struct HeadWait {
    sleep: Arc<Mutex<Option<Pin<Box<tokio::time::Sleep>>>>>,
    deadline: Instant,
}

impl Sleep for HeadWait {}

impl Future for HeadWait {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline;
        let mut kept = self.sleep.lock().unwrap_or_else(PoisonError::into_inner);
        let sleep = kept.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())));
        if sleep.deadline().into_std() > deadline {
            // Never with hyper (its deadlines only grow), but an earlier deadline must hold.
            sleep.as_mut().reset(deadline.into());
        }
        loop {
            match sleep.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if tokio::time::Instant::now().into_std() >= deadline => return Poll::Ready(()),
                // It fired for an earlier deadline: move it to this one, and poll it again so it
                // holds this task's waker.
                Poll::Ready(()) => sleep.as_mut().reset(deadline.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn kept(timer: &HeadTimer) -> *const tokio::time::Sleep {
        let kept = timer.sleep.lock().unwrap();
        let sleep: &tokio::time::Sleep = kept.as_ref().expect("a sleep is kept");
        sleep as *const _
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_at_its_own_deadline_when_an_earlier_one_set_the_sleep() {
        let timer = HeadTimer::default();
        let t0 = tokio::time::Instant::now();
        let mut first = timer.sleep(Duration::from_secs(10));
        assert!(first.as_mut().poll(&mut Context::from_waker(std::task::Waker::noop())).is_pending());
        let made = kept(&timer);
        drop(first);
        tokio::time::advance(Duration::from_secs(3)).await;
        let second = timer.sleep(Duration::from_secs(10));
        second.await;
        assert_eq!(t0.elapsed(), Duration::from_secs(13), "the second wait's deadline, not the first's");
        assert_eq!(kept(&timer), made, "one tokio sleep serves every wait of the connection");
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_after_the_sleep_fired_unwatched_still_waits_its_whole_time() {
        let timer = HeadTimer::default();
        let mut first = timer.sleep(Duration::from_secs(10));
        assert!(first.as_mut().poll(&mut Context::from_waker(std::task::Waker::noop())).is_pending());
        drop(first);
        // The sleep fires while no head is awaited (a request being answered).
        tokio::time::advance(Duration::from_secs(25)).await;
        let t1 = tokio::time::Instant::now();
        timer.sleep(Duration::from_secs(10)).await;
        assert_eq!(t1.elapsed(), Duration::from_secs(10));
    }

    /// A real connection: requests spaced over more than the timeout are all answered (each
    /// wait gets its own deadline); then the idle connection is closed, and so is one whose
    /// head never ends.
    #[tokio::test]
    async fn hyper_closes_an_idle_or_slow_connection_and_keeps_a_busy_one() {
        let timeout = Duration::from_millis(300);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let mut h1 = hyper::server::conn::http1::Builder::new();
                h1.timer(HeadTimer::default()).header_read_timeout(timeout);
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from("ok"))))
                });
                tokio::spawn(h1.serve_connection(hyper_util::rt::TokioIo::new(stream), svc));
            }
        });
        let mut busy = tokio::net::TcpStream::connect(addr).await.unwrap();
        let started = std::time::Instant::now();
        let mut answered = 0;
        while started.elapsed() < 3 * timeout {
            busy.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
            let mut buf = [0u8; 256];
            let n = busy.read(&mut buf).await.unwrap();
            assert!(
                buf[..n].starts_with(b"HTTP/1.1 200"),
                "answer {answered}: {:?}",
                String::from_utf8_lossy(&buf[..n])
            );
            answered += 1;
            tokio::time::sleep(timeout / 3).await;
        }
        assert!(answered >= 6, "{answered}");
        let closed = |mut s: tokio::net::TcpStream| async move {
            let mut buf = [0u8; 256];
            tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.expect("closed in time").unwrap_or(0)
        };
        assert_eq!(closed(busy).await, 0, "the idle connection is closed");
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nhost").await.unwrap();
        assert_eq!(closed(slow).await, 0, "the head that never ends is not waited for");
    }
}
