//! Scratch timing of single operations and batches against a running hregd.

use hreg::{Client, Op};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/tmp/x.sock".into());
    let client = Client::connect(&path)?;
    let n = 100_000;
    let value = [7u8; 16];
    let h = client.insert(&value, 0)?;
    let mut buf = [0u8; 64];
    let start = Instant::now();
    for _ in 0..n {
        client.get_into(h, &mut buf)?;
    }
    println!("get_into 16 B: {:?}/op", start.elapsed() / n);
    let start = Instant::now();
    for _ in 0..n {
        let h = client.insert(&value, 0)?;
        client.release(h)?;
    }
    println!("insert+release: {:?}/pair", start.elapsed() / n);
    let big = vec![1u8; 4096];
    let hb = client.insert(&big, 0)?;
    let mut bigbuf = vec![0u8; 4096];
    let start = Instant::now();
    for _ in 0..n {
        client.get_into(hb, &mut bigbuf)?;
    }
    println!("get_into 4 KiB: {:?}/op", start.elapsed() / n);
    let mut bufs = vec![[0u8; 64]; 64];
    let start = Instant::now();
    for _ in 0..n / 64 {
        let mut ops: Vec<Op> = bufs
            .iter_mut()
            .map(|b| Op::Get { handle: h, buf: b })
            .collect();
        client.submit(&mut ops)?;
    }
    println!("batch of 64 gets: {:?}/op", start.elapsed() / (n / 64 * 64));
    Ok(())
}
