//! Property tests: `Cra` agrees with a reference that scans a `Vec` of
//! entries, for in-place updates, compaction and builder output.

use proptest::prelude::*;
use valkyrie_lockfree::{Cra, CraBuilder, MatchKind};

#[derive(Clone, Debug)]
enum Op {
    Insert(Vec<u8>, MatchKind, u32),
    Remove(Vec<u8>, MatchKind),
    Lookup(Vec<u8>),
    Compact,
}

/// Reference: a list of entries scanned linearly.
#[derive(Default)]
struct Reference {
    entries: Vec<(Vec<u8>, MatchKind, u32)>,
}

impl Reference {
    fn insert(&mut self, path: &[u8], kind: MatchKind, value: u32) -> Option<u32> {
        match self
            .entries
            .iter_mut()
            .find(|(p, k, _)| p == path && *k == kind)
        {
            Some(entry) => Some(std::mem::replace(&mut entry.2, value)),
            None => {
                self.entries.push((path.to_vec(), kind, value));
                None
            }
        }
    }

    fn remove(&mut self, path: &[u8], kind: MatchKind) -> Option<u32> {
        let index = self
            .entries
            .iter()
            .position(|(p, k, _)| p == path && *k == kind)?;
        Some(self.entries.swap_remove(index).2)
    }

    /// Matches of `path`, most specific first.
    fn matches(&self, path: &[u8]) -> Vec<(MatchKind, u32)> {
        let mut out = Vec::new();
        if let Some((_, _, v)) = self
            .entries
            .iter()
            .find(|(p, k, _)| *k == MatchKind::Exact && p == path)
        {
            out.push((MatchKind::Exact, *v));
        }
        let mut prefixes: Vec<_> = self
            .entries
            .iter()
            .filter(|(p, k, _)| *k == MatchKind::Prefix && path.starts_with(p))
            .collect();
        prefixes.sort_by_key(|(p, _, _)| std::cmp::Reverse(p.len()));
        out.extend(
            prefixes
                .into_iter()
                .map(|(_, _, v)| (MatchKind::Prefix, *v)),
        );
        out
    }

    fn sorted(&self) -> Vec<(Vec<u8>, MatchKind, u32)> {
        let mut all = self.entries.clone();
        all.sort_by(|a, b| (&a.0, a.1 == MatchKind::Prefix).cmp(&(&b.0, b.1 == MatchKind::Prefix)));
        all
    }
}

/// Paths over a tiny alphabet so that entries share prefixes and split
/// each other's labels, plus the empty path and long paths.
fn path() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => proptest::collection::vec(prop_oneof![Just(b'/'), Just(b'a'), Just(b'b')], 0..8),
        1 => Just(Vec::new()),
        1 => (0usize..3).prop_map(|n| {
            let mut p = b"/very/long/shared/prefix/".repeat(8);
            p.extend_from_slice(format!("{n}").as_bytes());
            p
        }),
        1 => proptest::collection::vec(any::<u8>(), 0..12),
    ]
}

fn kind() -> impl Strategy<Value = MatchKind> {
    prop_oneof![Just(MatchKind::Exact), Just(MatchKind::Prefix)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (path(), kind(), any::<u32>()).prop_map(|(p, k, v)| Op::Insert(p, k, v)),
        2 => (path(), kind()).prop_map(|(p, k)| Op::Remove(p, k)),
        4 => path().prop_map(Op::Lookup),
        1 => Just(Op::Compact),
    ]
}

fn check_lookups(tree: &Cra<u32>, reference: &Reference, path: &[u8]) -> Result<(), TestCaseError> {
    let expected = reference.matches(path);
    let got: Vec<(MatchKind, u32)> = tree.matches(path).map(|(k, v)| (k, *v)).collect();
    prop_assert_eq!(&got, &expected, "matches of {:?}", path);

    let expected_exact = expected
        .iter()
        .find(|(k, _)| *k == MatchKind::Exact)
        .map(|(_, v)| v);
    prop_assert_eq!(tree.exact(path), expected_exact);
    let expected_prefix = expected
        .iter()
        .find(|(k, _)| *k == MatchKind::Prefix)
        .map(|(_, v)| v);
    prop_assert_eq!(tree.longest_prefix(path), expected_prefix);

    // `lookup` stops at the first accepted candidate: accept odd values.
    let expected_odd = expected.iter().map(|(_, v)| v).find(|v| *v % 2 == 1);
    prop_assert_eq!(tree.lookup(path, |v| v % 2 == 1), expected_odd);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn cra_matches_reference(ops in proptest::collection::vec(op(), 0..200)) {
        let mut tree = Cra::new();
        let mut reference = Reference::default();
        for op in &ops {
            match op {
                Op::Insert(path, kind, value) => {
                    prop_assert_eq!(tree.insert(path, *kind, *value), reference.insert(path, *kind, *value));
                }
                Op::Remove(path, kind) => {
                    prop_assert_eq!(tree.remove(path, *kind), reference.remove(path, *kind));
                }
                Op::Lookup(path) => check_lookups(&tree, &reference, path)?,
                Op::Compact => {
                    tree.compact();
                    prop_assert_eq!(tree.fragmentation(), 0.0);
                }
            }
            prop_assert_eq!(tree.len(), reference.entries.len());
            let fragmentation = tree.fragmentation();
            prop_assert!((0.0..1.0).contains(&fragmentation));
        }
        // Every stored path and each of its prefixes and extensions.
        for (path, _, _) in reference.entries.clone() {
            for end in 0..=path.len() {
                check_lookups(&tree, &reference, &path[..end])?;
            }
            let mut longer = path.clone();
            longer.push(b'a');
            check_lookups(&tree, &reference, &longer)?;
        }
        let listed: Vec<_> = tree.entries().into_iter().map(|(p, k, v)| (p, k, *v)).collect();
        prop_assert_eq!(listed, reference.sorted());
    }

    #[test]
    fn builder_equals_in_place(entries in proptest::collection::vec((path(), kind(), any::<u32>()), 0..150)) {
        let mut in_place = Cra::new();
        let mut builder = CraBuilder::new();
        for (path, kind, value) in &entries {
            in_place.insert(path, *kind, *value);
            builder.insert(path, *kind, *value);
        }
        let built = builder.build();
        prop_assert_eq!(built.fragmentation(), 0.0);
        prop_assert!(built.node_count() <= in_place.node_count());
        let a: Vec<_> = built.entries().into_iter().map(|(p, k, v)| (p, k, *v)).collect();
        let b: Vec<_> = in_place.entries().into_iter().map(|(p, k, v)| (p, k, *v)).collect();
        prop_assert_eq!(a, b);
        // A compact tree has no node without a value that has fewer than
        // two children, except the root: node count is at most
        // 2 * distinct paths + 1.
        let mut paths: Vec<_> = entries.iter().map(|(p, _, _)| p.clone()).collect();
        paths.sort();
        paths.dedup();
        prop_assert!(built.node_count() <= 2 * paths.len() + 1);
    }
}
