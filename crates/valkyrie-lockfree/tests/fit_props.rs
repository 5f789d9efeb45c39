//! Property tests: `Fit` behaves like `std::collections::HashMap` under
//! random inserts, removes and lookups.

use std::collections::HashMap;

use proptest::prelude::*;
use valkyrie_lockfree::Fit;

#[derive(Clone, Debug)]
enum Op {
    Insert(Vec<u8>, u32),
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
        2 => key().prop_map(Op::Remove),
        3 => key().prop_map(Op::Get),
    ]
}

fn check_against_model(capacity: usize, load_factor: f64, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut table = Fit::with_capacity(capacity, load_factor);
    let mut model: HashMap<Vec<u8>, u32> = HashMap::new();
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
            }
        }
        prop_assert_eq!(table.len(), model.len());
        prop_assert!(table.load_factor() <= load_factor);
    }
    for (key, value) in &model {
        prop_assert_eq!(table.get(key), Some(value));
    }
    let mut seen: Vec<(Vec<u8>, u32)> = table.iter().map(|(k, v)| (k.to_vec(), *v)).collect();
    let mut expected: Vec<(Vec<u8>, u32)> = model.into_iter().collect();
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
