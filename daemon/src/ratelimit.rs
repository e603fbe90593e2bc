//! Rate-limited warnings: a hostile or broken client can make the daemon
//! want to warn thousands of times a second; the log takes a few lines per
//! second and a count of what was left out.

use hreg_proto::locks::lock;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Warnings let through per window.
const PER_WINDOW: u32 = 20;
const WINDOW: Duration = Duration::from_secs(1);

struct Window {
    started: Option<Instant>,
    let_through: u32,
    suppressed: u64,
}

static WARNINGS: Mutex<Window> = Mutex::new(Window {
    started: None,
    let_through: 0,
    suppressed: 0,
});

/// Calls `warn` unless too many warnings were logged in the last second.
/// When a new second starts after some were dropped, says how many.
pub fn warn_limited(warn: impl FnOnce()) {
    let allowed = {
        let mut window = lock(&WARNINGS);
        let now = Instant::now();
        if window
            .started
            .is_none_or(|start| now.duration_since(start) >= WINDOW)
        {
            if window.suppressed > 0 {
                tracing::warn!(
                    suppressed = window.suppressed,
                    "warnings suppressed in the last second"
                );
            }
            *window = Window {
                started: Some(now),
                let_through: 0,
                suppressed: 0,
            };
        }
        if window.let_through < PER_WINDOW {
            window.let_through += 1;
            true
        } else {
            window.suppressed += 1;
            false
        }
    };
    if allowed {
        warn();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_a_few_through_per_second() {
        let mut emitted = 0;
        for _ in 0..1000 {
            warn_limited(|| emitted += 1);
        }
        assert!(emitted >= 1 && emitted <= PER_WINDOW as usize, "{emitted}");
    }
}
