//! Property tests: `ShardedFit` behaves like `std::collections::HashMap`
//! under random inserts, removes and lookups, and a clone taken at any
//! point keeps its entries while the original changes (and the reverse).

use std::collections::HashMap;
use std::sync::Arc;

use proptest::prelude::*;
use valkyrie_lockfree::{FitCounters, FitTally, ShardedFit};

/// The expected entries of a table.
type Model = HashMap<Vec<u8>, u32>;

#[derive(Clone, Debug)]
enum Op {
    Insert(Vec<u8>, u32),
    Remove(Vec<u8>),
    Get(Vec<u8>),
    /// Clone the table and keep the clone as a snapshot.
    Snapshot,
    /// Change the oldest snapshot instead of the live table.
    InsertIntoSnapshot(Vec<u8>, u32),
    ShrinkToFit,
}

/// Keys of every length class the key comparison treats apart (0-3, 4-7,
/// 8-16 and longer bytes), often repeated so that operations hit the same
/// keys.
fn key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b')], 0..18),
        3 => (0u32..200).prop_map(|n| format!("tenant-{n:07}").into_bytes()),
        1 => (0u32..50).prop_map(|n| format!("t{n}").into_bytes()),
        1 => proptest::collection::vec(any::<u8>(), 0..40),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (key(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
        3 => key().prop_map(Op::Remove),
        4 => key().prop_map(Op::Get),
        1 => Just(Op::Snapshot),
        1 => (key(), any::<u32>()).prop_map(|(k, v)| Op::InsertIntoSnapshot(k, v)),
        1 => Just(Op::ShrinkToFit),
    ]
}

fn assert_same(table: &ShardedFit<u32>, model: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(table.len(), model.len());
    for (key, value) in model {
        prop_assert_eq!(table.get(key), Some(value));
    }
    let mut seen: Vec<(Vec<u8>, u32)> = table.iter().map(|(k, v)| (k.to_vec(), *v)).collect();
    let mut expected: Vec<(Vec<u8>, u32)> = model
        .iter()
        .map(|(key, value)| (key.clone(), *value))
        .collect();
    seen.sort();
    expected.sort();
    prop_assert_eq!(seen, expected);
    Ok(())
}

fn check_against_model(
    shard_count: usize,
    shard_capacity: usize,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let counters = FitCounters::new();
    let mut table: ShardedFit<u32> = ShardedFit::new(shard_count, shard_capacity, 0.875, &counters);
    let mut model = Model::new();
    let mut snapshots: Vec<(ShardedFit<u32>, Model)> = Vec::new();
    let mut tally = FitTally::default();
    for op in ops {
        match op {
            Op::Insert(key, value) => {
                prop_assert_eq!(table.insert(key, *value), model.insert(key.clone(), *value));
            }
            Op::Remove(key) => {
                prop_assert_eq!(table.remove(key), model.remove(key));
            }
            Op::Get(key) => {
                prop_assert_eq!(table.get(key), model.get(key));
                prop_assert_eq!(table.get_tallied(key, &mut tally), model.get(key));
                prop_assert_eq!(table.contains_key(key), model.contains_key(key));
            }
            Op::Snapshot => snapshots.push((table.clone(), model.clone())),
            Op::InsertIntoSnapshot(key, value) => {
                if let Some((snapshot, snapshot_model)) = snapshots.first_mut() {
                    prop_assert_eq!(
                        snapshot.insert(key, *value),
                        snapshot_model.insert(key.clone(), *value)
                    );
                }
            }
            Op::ShrinkToFit => table.shrink_to_fit(),
        }
        prop_assert_eq!(table.len(), model.len());
    }
    assert_same(&table, &model)?;
    for (snapshot, snapshot_model) in &snapshots {
        assert_same(snapshot, snapshot_model)?;
    }
    let gets = ops.iter().filter(|op| matches!(op, Op::Get(_))).count();
    prop_assert_eq!(tally.operations, gets as u64);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn matches_hash_map(
        shard_bits in 0u32..7,
        shard_capacity in 0usize..40,
        ops in proptest::collection::vec(op(), 0..400),
    ) {
        check_against_model(1 << shard_bits, shard_capacity, &ops)?;
    }
}

#[test]
fn clones_share_untouched_shards() {
    let counters = FitCounters::new();
    let mut table: ShardedFit<u32> = ShardedFit::new(16, 64, 0.875, &counters);
    for i in 0..1000u32 {
        table.insert(format!("tenant-{i:07}").as_bytes(), i);
    }
    let snapshot = table.clone();
    table.insert(b"tenant-0000001", 7);
    let shared = table
        .shards()
        .iter()
        .zip(snapshot.shards())
        .filter(|(mine, theirs)| Arc::ptr_eq(mine, theirs))
        .count();
    assert_eq!(shared, 15, "one insert copies exactly one of 16 shards");
    assert_eq!(snapshot.get(b"tenant-0000001"), Some(&1));
    assert_eq!(table.get(b"tenant-0000001"), Some(&7));
}

#[test]
fn shards_fill_evenly() {
    let counters = FitCounters::new();
    let mut table: ShardedFit<u32> = ShardedFit::new(32, 4096, 0.875, &counters);
    for i in 0..100_000u32 {
        table.insert(format!("tenant-{i:07}").as_bytes(), i);
    }
    let mean = 100_000 / 32;
    for (index, shard) in table.shards().iter().enumerate() {
        assert!(
            shard.len() < mean * 6 / 5,
            "shard {index}: {} of {mean}",
            shard.len()
        );
        assert!(
            shard.len() > mean * 4 / 5,
            "shard {index}: {} of {mean}",
            shard.len()
        );
    }
}

#[test]
fn inserts_and_removes_are_counted() {
    let counters = FitCounters::new();
    let mut table: ShardedFit<u32> = ShardedFit::new(4, 16, 0.875, &counters);
    table.insert(b"a", 1);
    table.insert(b"b", 2);
    table.remove(b"a");
    table.get(b"b");
    assert_eq!(
        counters.operations(),
        3,
        "two inserts and a remove; get is not counted"
    );
    let mut tally = FitTally::default();
    table.get_tallied(b"b", &mut tally);
    table.get_tallied(b"missing", &mut tally);
    assert_eq!(tally.operations, 2);
}

#[test]
#[should_panic(expected = "invalid shard count 3")]
fn shard_count_must_be_power_of_two() {
    let counters = FitCounters::new();
    let _ = ShardedFit::<u32>::new(3, 16, 0.875, &counters);
}
