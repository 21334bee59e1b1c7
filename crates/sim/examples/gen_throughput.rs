//! Measures generate+encode throughput of the simulator's generator (run with `--release`):
//! `cargo run --release -p fpaas-sim --example gen_throughput -- [EVENTS] [small]`.

use std::time::Instant;

use fpaas_sim::{FaultConfig, Generator};

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let small = std::env::args().nth(2).is_some_and(|a| a == "small");
    let mut g = Generator::new(1, 5_000, 1, FaultConfig::default()).with_small_frames(small);
    let t0 = Instant::now();
    let mut bytes = 0usize;
    for _ in 0..n {
        match g.next_event() {
            Ok(ev) => bytes += ev.frames.iter().map(|f| f.len()).sum::<usize>(),
            Err(e) => {
                eprintln!("generator failed: {e}");
                std::process::exit(1);
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{n} events in {secs:.2} s: {:.0} events/s, mean frame {} B, {:.1} MB/s",
        n as f64 / secs,
        bytes as u64 / n.max(1),
        bytes as f64 / secs / 1e6
    );
}
