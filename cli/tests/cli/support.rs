//! What every module of the test binary shares: the binary under test, a free loopback
//! port, a scratch directory per test.

/// The `leadpipe` binary cargo built for these tests.
pub const BINARY: &str = env!("CARGO_BIN_EXE_leadpipe");

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// A new, empty directory for one test (`leadpipe-<area>-<name>-<pid>` in the temp dir).
pub fn scratch(area: &str, name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("leadpipe-{area}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

/// Waits while `done` is false and `progress` keeps moving; fails after 90 s without it.
pub async fn wait_on_progress(mut progress: impl FnMut() -> (bool, usize)) {
    use std::time::{Duration, Instant};
    let mut last = (Instant::now(), usize::MAX);
    loop {
        let (done, count) = progress();
        if done {
            return;
        }
        if count != last.1 {
            last = (Instant::now(), count);
        }
        assert!(
            last.0.elapsed() < Duration::from_secs(90),
            "no progress for 90 s (at {count})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
