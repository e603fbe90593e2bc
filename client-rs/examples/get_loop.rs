//! One thread reading one 16-byte value in a loop: median latency of a get
//! (each timed alone) and throughput (an untimed loop). The Rust line of
//! `bench/langs/run`, which runs the same loop in C, Python and Go.
//!
//!     get_loop SOCKET ITERATIONS

use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: get_loop SOCKET ITERATIONS");
        std::process::exit(2);
    }
    let iterations: usize = args[2].parse()?;
    let client = hreg::Client::connect(&args[1])?;
    let h = client.insert(b"0123456789abcdef", 0)?;
    let mut buf = [0u8; 16];
    for _ in 0..iterations / 10 {
        client.get(h)?;
    }
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let start = Instant::now();
        let value = client.get(h)?;
        samples.push(start.elapsed().as_nanos() as u64);
        assert_eq!(value.len(), 16);
    }
    samples.sort_unstable();
    let start = Instant::now();
    for _ in 0..iterations {
        client.get_into(h, &mut buf)?;
    }
    let rate = iterations as f64 / start.elapsed().as_secs_f64();
    client.release(h)?;
    println!(
        "rust get 16 B, 1 thread: p50 {} ns, {:.0} ops/s",
        samples[iterations / 2],
        rate
    );
    Ok(())
}
