//! Scratch check of fork safety and disconnection against a running hregd:
//! `lifecycle SOCKET fork` or `lifecycle SOCKET wait` (then kill the daemon).

use hreg::{Client, Error};
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/tmp/x.sock".into());
    let mode = std::env::args().nth(2).unwrap_or_default();
    let client = Client::connect(&path)?;
    let h = client.insert(b"parent", 0)?;
    match mode.as_str() {
        "fork" => {
            // SAFETY: scratch program; the child only uses async-signal-safe
            // enough code for a test (it is single-threaded here).
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                assert!(matches!(client.get(h), Err(Error::Disconnected)));
                assert!(client.is_disconnected());
                let child = Client::connect(&path).expect("child connect");
                let c = child.insert(b"child", 0).expect("child insert");
                assert_eq!(child.get(c).expect("child get"), b"child");
                assert!(child.session_id() != client.session_id());
                drop(client);
                drop(child);
                println!("child ok");
                std::process::exit(0);
            }
            let mut status = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            assert_eq!(status, 0, "child failed");
            assert_eq!(client.get(h)?, b"parent");
            println!("parent ok after child exit");
        }
        _ => {
            println!("ready");
            std::thread::sleep(Duration::from_secs(2));
            let start = Instant::now();
            let r = client.get(h);
            println!("after daemon death: {r:?} in {:?}", start.elapsed());
            let start = Instant::now();
            let r = client.insert(b"x", 0);
            println!("again: {r:?} in {:?}", start.elapsed());
            println!("stats: {:?}", client.stats());
        }
    }
    Ok(())
}
