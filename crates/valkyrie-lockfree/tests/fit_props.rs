//! Property tests: `Fit` behaves like `std::collections::HashMap` under
//! random inserts (with and without a record tail), removes and lookups.

use std::collections::HashMap;

use proptest::prelude::*;
use valkyrie_lockfree::{Fit, FitTally};

#[derive(Clone, Debug)]
enum Op {
    Insert(Vec<u8>, u32),
    InsertWithTail(Vec<u8>, u32, Vec<u8>),
    Remove(Vec<u8>),
    Get(Vec<u8>),
}

/// Keys from a small alphabet (so inserts, removes and lookups hit the same
/// keys often), the empty key, keys sharing long prefixes, and long keys.
fn key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), Just(b'.')], 0..6),
        2 => (0u32..64).prop_map(|n| format!("tenant-{n:04}.example.com").into_bytes()),
        1 => Just(Vec::new()),
        1 => (0usize..3, any::<u8>()).prop_map(|(n, b)| vec![b; 200 + n * 300]),
        1 => proptest::collection::vec(any::<u8>(), 0..40),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (key(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
        1 => (key(), any::<u32>(), proptest::collection::vec(any::<u8>(), 0..300))
            .prop_map(|(k, v, tail)| Op::InsertWithTail(k, v, tail)),
        2 => key().prop_map(Op::Remove),
        3 => key().prop_map(Op::Get),
    ]
}

fn check_against_model(capacity: usize, load_factor: f64, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut table = Fit::with_capacity(capacity, load_factor);
    // Key to value and record tail. An insert without a tail keeps the
    // tail of a key that has one.
    let mut model: HashMap<Vec<u8>, (u32, Vec<u8>)> = HashMap::new();
    for op in ops {
        match op {
            Op::Insert(key, value) => {
                let tail = model
                    .get(key)
                    .map(|(_, tail)| tail.clone())
                    .unwrap_or_default();
                let replaced = model.insert(key.clone(), (*value, tail));
                prop_assert_eq!(table.insert(key, *value), replaced.map(|(value, _)| value));
            }
            Op::InsertWithTail(key, value, tail) => {
                let replaced = model.insert(key.clone(), (*value, tail.clone()));
                prop_assert_eq!(
                    table.insert_with_tail(key, *value, tail),
                    replaced.map(|(value, _)| value)
                );
            }
            Op::Remove(key) => {
                prop_assert_eq!(table.remove(key), model.remove(key).map(|(value, _)| value));
            }
            Op::Get(key) => {
                let expected = model.get(key);
                prop_assert_eq!(table.get(key), expected.map(|(value, _)| value));
                let hash = table.prefetch(key);
                table.prefetch_record(key, hash);
                let mut tally = FitTally::default();
                prop_assert_eq!(
                    table.get_hashed_tallied(key, hash, &mut tally),
                    expected.map(|(value, _)| value)
                );
                prop_assert_eq!(tally.operations, 1);
                let found = table.get_with_tail_tallied(key, &mut tally);
                prop_assert_eq!(
                    found,
                    expected.map(|(value, tail)| (value, tail.as_slice()))
                );
                if let Some((_, tail)) = found {
                    prop_assert_eq!(tail.as_ptr() as usize % 8, 0, "tail not word-aligned");
                }
            }
        }
        prop_assert_eq!(table.len(), model.len());
        prop_assert!(table.load_factor() <= load_factor);
    }
    let mut tally = FitTally::default();
    for (key, (value, tail)) in &model {
        prop_assert_eq!(table.get(key), Some(value));
        let hash = table.prefetch(key);
        prop_assert_eq!(
            table.get_hashed_with_tail_tallied(key, hash, &mut tally),
            Some((value, tail.as_slice()))
        );
    }
    let mut seen: Vec<(Vec<u8>, u32)> = table.iter().map(|(k, v)| (k.to_vec(), *v)).collect();
    let mut expected: Vec<(Vec<u8>, u32)> = model
        .into_iter()
        .map(|(key, (value, _))| (key, value))
        .collect();
    seen.sort();
    expected.sort();
    prop_assert_eq!(seen, expected);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn fit_matches_hashmap(
        capacity in 0usize..64,
        load_factor in prop_oneof![Just(0.5), Just(0.875), Just(0.9375)],
        ops in proptest::collection::vec(op(), 0..400),
    ) {
        check_against_model(capacity, load_factor, &ops)?;
    }

    #[test]
    fn fit_full_table_churn(ops in proptest::collection::vec(op(), 0..600)) {
        // One group at the maximum load factor: every insert probes, and
        // tombstones fill the group quickly.
        check_against_model(7, 0.9375, &ops)?;
    }
}

/// A value with padding bytes and 8-byte alignment, the largest alignment
/// the FIT accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Padded {
    small: u8,
    large: u64,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn fit_clone_is_independent(
        before in proptest::collection::vec(op(), 0..200),
        after in proptest::collection::vec(op(), 0..200),
    ) {
        let mut original = Fit::with_capacity(8, 0.875);
        let mut model: HashMap<Vec<u8>, u32> = HashMap::new();
        for op in &before {
            match op {
                Op::Insert(key, value) => {
                    original.insert(key, *value);
                    model.insert(key.clone(), *value);
                }
                Op::InsertWithTail(key, value, tail) => {
                    original.insert_with_tail(key, *value, tail);
                    model.insert(key.clone(), *value);
                }
                Op::Remove(key) => {
                    original.remove(key);
                    model.remove(key);
                }
                Op::Get(_) => {}
            }
        }
        let mut copy = original.clone();
        let mut copy_model = model.clone();
        for op in &after {
            match op {
                Op::Insert(key, value) => {
                    prop_assert_eq!(copy.insert(key, *value), copy_model.insert(key.clone(), *value));
                }
                Op::InsertWithTail(key, value, tail) => {
                    prop_assert_eq!(
                        copy.insert_with_tail(key, *value, tail),
                        copy_model.insert(key.clone(), *value)
                    );
                }
                Op::Remove(key) => {
                    prop_assert_eq!(copy.remove(key), copy_model.remove(key));
                }
                Op::Get(key) => {
                    prop_assert_eq!(copy.get(key), copy_model.get(key));
                }
            }
        }
        prop_assert_eq!(original.len(), model.len());
        for (key, value) in &model {
            prop_assert_eq!(original.get(key), Some(value));
        }
        for (key, value) in &copy_model {
            prop_assert_eq!(copy.get(key), Some(value));
        }
    }

    #[test]
    fn fit_stores_padded_values(
        entries in proptest::collection::vec((key(), any::<u8>(), any::<u64>()), 0..200),
        removed in proptest::collection::vec(key(), 0..50),
    ) {
        let mut table = Fit::with_capacity(4, 0.9375);
        let mut model: HashMap<Vec<u8>, Padded> = HashMap::new();
        for (key, small, large) in &entries {
            let value = Padded { small: *small, large: *large };
            prop_assert_eq!(table.insert(key, value), model.insert(key.clone(), value));
        }
        for key in &removed {
            prop_assert_eq!(table.remove(key), model.remove(key));
        }
        let copy = table.clone();
        for (key, value) in &model {
            prop_assert_eq!(table.get(key), Some(value));
            prop_assert_eq!(copy.get(key), Some(value));
        }
        prop_assert_eq!(table.iter().count(), model.len());
    }

    #[test]
    fn fit_stores_zero_sized_values(keys in proptest::collection::vec(key(), 0..100)) {
        let mut table: Fit<()> = Fit::default();
        let mut model = std::collections::HashSet::new();
        for key in &keys {
            prop_assert_eq!(table.insert(key, ()).is_some(), !model.insert(key.clone()));
        }
        for key in &model {
            prop_assert!(table.contains_key(key));
        }
        let mut seen: Vec<Vec<u8>> = table.iter().map(|(key, _)| key.to_vec()).collect();
        let mut expected: Vec<Vec<u8>> = model.into_iter().collect();
        seen.sort();
        expected.sort();
        prop_assert_eq!(seen, expected);
    }
}
