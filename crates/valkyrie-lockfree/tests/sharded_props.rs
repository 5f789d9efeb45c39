//! Property tests: `ShardedFit` behaves like `std::collections::HashMap`
//! under random inserts, removes and lookups, and a clone taken at any
//! point keeps its entries while the original changes (and the reverse),
//! whether the changes go into deltas, straight into bases, or are folded.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use proptest::prelude::*;
use valkyrie_lockfree::{FitCounters, FitTally, Rcu, ShardedFit};

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
    RemoveFromSnapshot(Vec<u8>),
    /// Drop the oldest snapshot, so that shards it shared become unique
    /// to the tables that remain.
    DropSnapshot,
    FoldAll,
    /// Fold deltas until about this many entries were gone through.
    FoldSome(usize),
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
        2 => Just(Op::Snapshot),
        1 => (key(), any::<u32>()).prop_map(|(k, v)| Op::InsertIntoSnapshot(k, v)),
        1 => key().prop_map(Op::RemoveFromSnapshot),
        1 => Just(Op::DropSnapshot),
        1 => Just(Op::FoldAll),
        1 => (0usize..100).prop_map(Op::FoldSome),
        1 => Just(Op::ShrinkToFit),
    ]
}

/// Returns every key an operation names.
fn keys_of(ops: &[Op]) -> HashSet<Vec<u8>> {
    ops.iter()
        .filter_map(|op| match op {
            Op::Insert(key, _)
            | Op::Remove(key)
            | Op::Get(key)
            | Op::InsertIntoSnapshot(key, _)
            | Op::RemoveFromSnapshot(key) => Some(key.clone()),
            _ => None,
        })
        .collect()
}

/// Checks the length, a lookup of every key in `keys` and the model, and
/// the iteration of `table` against `model`.
fn assert_same(
    table: &ShardedFit<u32>,
    model: &Model,
    keys: &HashSet<Vec<u8>>,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(table.len(), model.len());
    for (key, value) in model {
        prop_assert_eq!(table.get(key), Some(value));
    }
    for key in keys {
        prop_assert_eq!(table.get(key), model.get(key), "key {:?}", key);
        prop_assert_eq!(table.contains_key(key), model.contains_key(key));
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
    let keys = keys_of(ops);
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
                let hash = table.prefetch(key);
                prop_assert_eq!(
                    table.get_hashed_tallied(key, hash, &mut tally),
                    model.get(key)
                );
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
            Op::RemoveFromSnapshot(key) => {
                if let Some((snapshot, snapshot_model)) = snapshots.first_mut() {
                    prop_assert_eq!(snapshot.remove(key), snapshot_model.remove(key));
                }
            }
            Op::DropSnapshot => {
                if !snapshots.is_empty() {
                    snapshots.remove(0);
                }
            }
            Op::FoldAll => {
                table.fold_all();
                prop_assert_eq!(table.delta_len(), 0);
                prop_assert_eq!(table.delta_count(), 0);
            }
            Op::FoldSome(max_entries) => {
                let before = table.delta_len();
                let folded = table.fold_some(*max_entries);
                prop_assert_eq!(folded == 0, before == 0);
                prop_assert!(table.delta_len() < before || before == 0);
            }
            Op::ShrinkToFit => table.shrink_to_fit(),
        }
        prop_assert_eq!(table.len(), model.len());
    }
    assert_same(&table, &model, &keys)?;
    for (snapshot, snapshot_model) in &snapshots {
        assert_same(snapshot, snapshot_model, &keys)?;
    }
    // Folding changes no table's entries, and a fold of the live table
    // changes no snapshot that shares its shards.
    table.fold_all();
    assert_same(&table, &model, &keys)?;
    for (snapshot, snapshot_model) in &mut snapshots {
        assert_same(snapshot, snapshot_model, &keys)?;
        snapshot.fold_all();
        assert_same(snapshot, snapshot_model, &keys)?;
    }
    // Each get is counted once by `get_tallied` and once by
    // `get_hashed_tallied`.
    let gets = ops.iter().filter(|op| matches!(op, Op::Get(_))).count();
    prop_assert_eq!(tally.operations, 2 * gets as u64);
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

/// Returns how many base shards two tables share.
fn shared_bases(table: &ShardedFit<u32>, other: &ShardedFit<u32>) -> usize {
    table
        .shards()
        .iter()
        .zip(other.shards())
        .filter(|(mine, theirs)| Arc::ptr_eq(mine, theirs))
        .count()
}

#[test]
fn clones_share_untouched_shards() {
    let counters = FitCounters::new();
    let mut table: ShardedFit<u32> = ShardedFit::new(16, 64, 0.875, &counters);
    for i in 0..1000u32 {
        table.insert(format!("tenant-{i:07}").as_bytes(), i);
    }
    assert_eq!(table.delta_count(), 0, "a table never cloned has no delta");
    let snapshot = table.clone();
    table.insert(b"tenant-0000001", 7);
    assert_eq!(
        shared_bases(&table, &snapshot),
        16,
        "an insert into a shared shard copies no base"
    );
    assert_eq!(table.delta_len(), 1);
    assert_eq!(snapshot.delta_len(), 0);
    assert_eq!(snapshot.get(b"tenant-0000001"), Some(&1));
    assert_eq!(table.get(b"tenant-0000001"), Some(&7));

    table.fold_all();
    assert_eq!(
        shared_bases(&table, &snapshot),
        15,
        "folding copies exactly the one base with a delta"
    );
    assert_eq!(table.delta_len(), 0);
    assert_eq!(snapshot.get(b"tenant-0000001"), Some(&1));
    assert_eq!(table.get(b"tenant-0000001"), Some(&7));
}

#[test]
fn batch_copies_bounded_bases() {
    // 64 shards of about 1,000 entries. A batch of 200 changes earns fold
    // work for about 200 * 8 / 1,000 = 1.6 shards, where copying on write
    // would copy nearly every base.
    let counters = FitCounters::new();
    let mut table: ShardedFit<u32> = ShardedFit::new(64, 1100, 0.875, &counters);
    for i in 0..64_000u32 {
        table.insert(format!("tenant-{i:07}").as_bytes(), i);
    }
    let mut model: Model = table
        .iter()
        .map(|(key, value)| (key.to_vec(), *value))
        .collect();
    for batch in 0..40u32 {
        let snapshot = table.clone();
        let snapshot_model = model.clone();
        for change in 0..200u32 {
            let n = batch * 200 + change;
            let key = format!("tenant-{:07}", n * 7919 % 70_000).into_bytes();
            if n % 5 == 0 {
                assert_eq!(table.remove(&key), model.remove(&key));
            } else {
                assert_eq!(table.insert(&key, n), model.insert(key, n));
            }
        }
        let copied = 64 - shared_bases(&table, &snapshot);
        assert!(copied <= 3, "batch {batch} copied {copied} of 64 bases");
        assert_eq!(snapshot.len(), snapshot_model.len());
        assert_eq!(table.len(), model.len());
        assert!(
            table.delta_len() < 64_000 / 4,
            "batch {batch}: {} delta entries",
            table.delta_len()
        );
    }
    for (key, value) in &model {
        assert_eq!(table.get(key), Some(value));
    }
    assert_eq!(table.iter().count(), model.len());
}

#[test]
fn fold_some_stops_after_budget() {
    let counters = FitCounters::new();
    let mut table: ShardedFit<u32> = ShardedFit::new(16, 300, 0.875, &counters);
    for i in 0..4000u32 {
        table.insert(format!("tenant-{i:07}").as_bytes(), i);
    }
    let snapshot = table.clone();
    // Fewer changes than the fold work of one shard earns, spread over
    // every shard.
    for i in 0..20u32 {
        table.insert(format!("tenant-{:07}", i * 199).as_bytes(), 0);
    }
    let with_deltas = table.delta_count();
    assert!(with_deltas > 4, "{with_deltas} shards with a delta");
    assert_eq!(shared_bases(&table, &snapshot), 16);

    // A shard has about 250 entries, so a budget of 400 folds two.
    let folded = table.fold_some(400);
    assert!(folded >= 400, "went through {folded} entries");
    assert_eq!(table.delta_count(), with_deltas - 2);
    assert_eq!(shared_bases(&table, &snapshot), 14);

    let folded = table.fold_some(0);
    assert!(folded > 0, "a zero budget still folds one delta");
    assert_eq!(table.delta_count(), with_deltas - 3);

    while table.fold_some(1000) > 0 {}
    assert_eq!(table.delta_len(), 0);
    assert_eq!(table.fold_some(1000), 0, "nothing left to fold");
    for i in 0..20u32 {
        let key = format!("tenant-{:07}", i * 199);
        assert_eq!(table.get(key.as_bytes()), Some(&0));
        assert_eq!(snapshot.get(key.as_bytes()), Some(&(i * 199)));
    }
}

#[test]
fn deltas_are_counted_once() {
    let counters = FitCounters::new();
    let mut table: ShardedFit<u32> = ShardedFit::new(4, 16, 0.875, &counters);
    for i in 0..10u32 {
        table.insert(&i.to_le_bytes(), i);
    }
    let _snapshot = table.clone();
    let before = counters.operations();
    table.insert(&1u32.to_le_bytes(), 100);
    table.insert(&99u32.to_le_bytes(), 99);
    assert_eq!(table.remove(&2u32.to_le_bytes()), Some(2));
    assert_eq!(table.remove(&98u32.to_le_bytes()), None);
    assert_eq!(
        counters.operations() - before,
        3,
        "two inserts and one remove of a present key"
    );
    table.fold_all();
    assert_eq!(counters.operations() - before, 3, "folding is not counted");
}

#[test]
fn readers_see_whole_batches() {
    // Each batch sets every key of a group to the batch number and moves
    // one extra key, so a snapshot that mixed two batches would show
    // different values or a different length.
    const KEYS: u32 = 3000;
    const BATCHES: u32 = 60;
    let counters = FitCounters::new();
    let mut first: ShardedFit<u32> = ShardedFit::new(8, 512, 0.875, &counters);
    for i in 0..KEYS {
        first.insert(format!("key-{i}").as_bytes(), 0);
    }
    first.insert(b"extra-0", 0);
    let rcu = Arc::new(Rcu::new(first));
    let done = AtomicBool::new(false);

    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                let mut checked = 0u32;
                // Bounded in case the writer stops early.
                while !done.load(Ordering::Acquire) && checked < 100_000 {
                    let snapshot = rcu.load_full();
                    let batch = *snapshot.get(b"key-0").expect("key-0 is present");
                    for i in (0..KEYS).step_by(7) {
                        assert_eq!(snapshot.get(format!("key-{i}").as_bytes()), Some(&batch));
                    }
                    let extra = format!("extra-{batch}");
                    assert_eq!(snapshot.get(extra.as_bytes()), Some(&batch));
                    assert_eq!(snapshot.len(), KEYS as usize + 1);
                    checked += 1;
                }
            });
        }

        for batch in 1..=BATCHES {
            rcu.update(|current| {
                let mut next = current.clone();
                for i in 0..KEYS {
                    next.insert(format!("key-{i}").as_bytes(), batch);
                }
                next.remove(format!("extra-{}", batch - 1).as_bytes());
                next.insert(format!("extra-{batch}").as_bytes(), batch);
                next
            });
        }
        done.store(true, Ordering::Release);
    });

    assert_eq!(rcu.load().get(b"key-1"), Some(&BATCHES));
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
