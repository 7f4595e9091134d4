//! Waiting for things that happen "soon": a polling `eventually` with one
//! patience setting for the whole suite, and free loopback ports.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often `eventually` polls.
const POLL: Duration = Duration::from_millis(100);

/// Multiplier applied to every timeout in the suite: `HUBWATCH_TEST_PATIENCE`
/// (a positive number, default 1). Raise it on a slow or busy machine.
pub fn patience() -> f64 {
    std::env::var("HUBWATCH_TEST_PATIENCE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v > 0.0)
        .unwrap_or(1.0)
}

/// `timeout` multiplied by [`patience`].
pub fn scaled(timeout: Duration) -> Duration {
    timeout.mul_f64(patience())
}

/// Polls `check` until it returns `Ok`, for up to `timeout` (scaled by
/// [`patience`]); returns the error of the last attempt when time runs out.
pub fn try_eventually<T>(
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + scaled(timeout);
    loop {
        match check() {
            Ok(value) => return Ok(value),
            Err(err) if Instant::now() >= deadline => return Err(err),
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// Like [`try_eventually`], but panics naming `what` and the last error when
/// time runs out.
pub fn eventually<T>(what: &str, timeout: Duration, check: impl FnMut() -> anyhow::Result<T>) -> T {
    match try_eventually(timeout, check) {
        Ok(value) => value,
        Err(err) => panic!(
            "{what}: still not so after {:?}; last attempt: {err:#}",
            scaled(timeout)
        ),
    }
}

/// Ports handed out by this process, so two tests running in parallel never
/// get the same one even if the kernel offers it twice.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback TCP port that was free a moment ago and that this process has
/// not handed out before. The port is released before returning, so a child
/// process can bind it.
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local address").port();
        drop(listener);
        let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
    panic!("no free loopback port found in 1000 attempts");
}

#[cfg(test)]
mod tests;
