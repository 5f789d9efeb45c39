//! Spread of sequential tenant keys over FIT home groups under foldhash,
//! for 20 random seeds each of its fast and quality hashers.
//!
//! For each seed it places `tenant-0000000`, `tenant-0000001`, ... in the
//! home groups of a FIT at load factor 0.75 (seven slots per group, a
//! prime group count). It prints the share of keys beyond the seventh in
//! their home group, which is a lower bound on the keys a FIT must place
//! past home. With random placement that share is about 0.06.
//!
//! Run: `cargo run --release -p valkyrie-lockfree --example hash_spread -- 7000`

use std::hash::{BuildHasher, Hasher};

const SEEDS: usize = 20;
const SLOTS_PER_GROUP: usize = 7;
const LOAD_FACTOR: f64 = 0.75;

fn main() {
    let keys: usize = match std::env::args().nth(1).map(|arg| arg.parse()) {
        Some(Ok(keys)) if keys > 0 => keys,
        _ => {
            eprintln!("usage: hash_spread KEYS (a whole number above 0, such as 7000)");
            std::process::exit(2);
        }
    };
    let groups = group_count(keys);
    let names: Vec<String> = (0..keys)
        .map(|index| format!("tenant-{index:07}"))
        .collect();

    let mut fast = Vec::with_capacity(SEEDS);
    let mut quality = Vec::with_capacity(SEEDS);
    for _ in 0..SEEDS {
        fast.push(overflow_share(
            &names,
            groups,
            &foldhash::fast::RandomState::default(),
        ));
        quality.push(overflow_share(
            &names,
            groups,
            &foldhash::quality::RandomState::default(),
        ));
    }
    println!("{keys} keys in {groups} groups, {SEEDS} seeds: share of keys past a full home group");
    print_spread("fast", &mut fast);
    print_spread("quality", &mut quality);
}

/// Returns the smallest prime group count with room for `keys` at the
/// load factor, as the FIT sizes its groups.
fn group_count(keys: usize) -> usize {
    let mut count = ((keys as f64 / LOAD_FACTOR) / SLOTS_PER_GROUP as f64).ceil() as usize;
    while count < 2
        || (2..)
            .take_while(|divisor| divisor * divisor <= count)
            .any(|divisor| count.is_multiple_of(divisor))
    {
        count += 1;
    }
    count
}

/// Returns the share of keys beyond the seventh in their home group, with
/// the home group taken from the high bits of the hash as the FIT does.
fn overflow_share(names: &[String], groups: usize, hasher: &impl BuildHasher) -> f64 {
    let mut counts = vec![0usize; groups];
    for name in names {
        let mut state = hasher.build_hasher();
        state.write(name.as_bytes());
        let hash = state.finish();
        counts[((u128::from(hash) * groups as u128) >> 64) as usize] += 1;
    }
    let past_home: usize = counts
        .iter()
        .map(|&count| count.saturating_sub(SLOTS_PER_GROUP))
        .sum();
    past_home as f64 / names.len() as f64
}

fn print_spread(name: &str, shares: &mut [f64]) {
    shares.sort_by(f64::total_cmp);
    println!(
        "{name:8} min {:.4}  median {:.4}  max {:.4}",
        shares[0],
        shares[shares.len() / 2],
        shares[shares.len() - 1]
    );
}
