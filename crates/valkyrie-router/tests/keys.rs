//! Key tables: entry file parsing, key extraction from requests, and a
//! property test that a table behaves like a map under inserts and removes,
//! also when clones share its shards.

use std::collections::HashMap;

use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;
use valkyrie_config::{Config, KeySource};
use valkyrie_lockfree::{FitCounters, FitTally};
use valkyrie_router::keys::{
    build_table, parse_entries, parse_entries_all, parse_entry, KeySpec, KeyTable, KeyTarget,
    Resolution, TableSizing, UpstreamNames,
};

fn targets() -> Config {
    toml::from_str(
        r#"
        [[upstreams]]
        name = "app"
        endpoints = ["127.0.0.1:9001", "127.0.0.1:9002"]

        [[upstreams]]
        name = "other"
        endpoints = [{ address = "127.0.0.1:9003", weight = 2 }]
        "#,
    )
    .unwrap()
}

fn sizing() -> TableSizing {
    TableSizing {
        capacity: 8,
        load_factor: 0.75,
    }
}

#[test]
fn entry_file_lines() {
    let text = "key,upstream,endpoint\n\
                # tenants\n\
                acme,app\n\
                \n\
                 globex , other , 127.0.0.1:9003 \n\
                initech,app,127.0.0.1:9002\n";
    let entries = parse_entries(text).unwrap();
    let parsed: Vec<_> = entries
        .iter()
        .map(|e| (e.line, e.key, e.upstream, e.endpoint))
        .collect();
    assert_eq!(
        parsed,
        vec![
            (3, "acme", "app", None),
            (5, "globex", "other", Some("127.0.0.1:9003")),
            (6, "initech", "app", Some("127.0.0.1:9002")),
        ]
    );
}

#[test]
fn entry_file_errors_name_the_line() {
    let cases = [
        ("acme\n", 1, "has no upstream"),
        ("a,app\nb,app,x,y\n", 2, "more than three fields"),
        ("a,app\n\n,app\n", 3, "the key is empty"),
        ("a,\n", 1, "empty upstream"),
        ("a,app,\n", 1, "empty endpoint"),
    ];
    for (text, line, message) in cases {
        let error = parse_entries(text).unwrap_err();
        assert_eq!(error.line, line, "{text:?}");
        assert!(
            error.message.contains(message),
            "{text:?}: {}",
            error.message
        );
    }
    assert!(parse_entry(&format!("{},app", "k".repeat(70_000))).is_err());
}

#[test]
fn all_entry_errors_collected_in_order() {
    let text = "key,upstream\na,app\nbad\n# note\nb,app\n,app\nc,\n";
    let (entries, errors) = parse_entries_all(text, 10);
    let keys: Vec<&str> = entries.iter().map(|entry| entry.key).collect();
    assert_eq!(keys, ["a", "b"]);
    let lines: Vec<usize> = errors.iter().map(|error| error.line).collect();
    assert_eq!(lines, [3, 6, 7]);

    // Parsing stops at the error that reaches the limit.
    let (entries, errors) = parse_entries_all(text, 2);
    assert_eq!(errors.len(), 2);
    assert_eq!(entries.len(), 2);
    assert_eq!(errors[1].line, 6);
}

#[test]
fn build_resolves_names_and_reports_unknown_ones() {
    let config = targets();
    let names = UpstreamNames::new(&config);
    let counters = FitCounters::new();
    let entries = parse_entries("a,app\nb,other,127.0.0.1:9003\na,app,127.0.0.1:9002\n").unwrap();
    let table = build_table(
        "tenants",
        KeySpec::PathSegment(0),
        None,
        &entries,
        &names,
        sizing(),
        &counters,
    )
    .unwrap();
    assert_eq!(table.len(), 2, "the later line for `a` replaces the first");
    assert_eq!(table.get(b"a"), Some(KeyTarget::new(0, Some(1))));
    assert_eq!(table.get(b"b"), Some(KeyTarget::new(1, Some(0))));

    let entries = parse_entries("a,app\nb,gone\n").unwrap();
    let error = build_table(
        "tenants",
        KeySpec::PathSegment(0),
        None,
        &entries,
        &names,
        sizing(),
        &counters,
    )
    .unwrap_err();
    assert_eq!(error.line, 2);
    assert!(error.message.contains("upstream `gone` is not defined"));
    assert!(
        error.message.ends_with("defined upstreams: `app`, `other`"),
        "{}",
        error.message
    );
    let error = names.resolve("ap", None).unwrap_err();
    assert!(
        error.ends_with("did you mean `app`? Defined upstreams: `app`, `other`"),
        "{error}"
    );

    let entries = parse_entries("a,app,127.0.0.1:9003\n").unwrap();
    let error = build_table(
        "tenants",
        KeySpec::PathSegment(0),
        None,
        &entries,
        &names,
        sizing(),
        &counters,
    )
    .unwrap_err();
    assert!(error
        .message
        .contains("`127.0.0.1:9003` is not an endpoint of upstream `app`"));
    assert!(
        error.message.ends_with(
            "did you mean `127.0.0.1:9001`? Endpoints of `app`: `127.0.0.1:9001`, `127.0.0.1:9002`"
        ),
        "{}",
        error.message
    );
}

#[test]
fn key_extraction() {
    let mut headers = HeaderMap::new();
    headers.insert("x-tenant", HeaderValue::from_static("acme"));
    headers.insert("x-empty", HeaderValue::from_static(""));
    let header = KeySpec::from_config(&KeySource::Header("X-Tenant".into())).unwrap();
    assert_eq!(
        header.extract("/", None, &headers).as_deref(),
        Some(&b"acme"[..])
    );
    let empty = KeySpec::from_config(&KeySource::Header("x-empty".into())).unwrap();
    assert_eq!(empty.extract("/", None, &headers), None);
    assert!(KeySpec::from_config(&KeySource::Header("bad name".into())).is_err());

    let segment = KeySpec::PathSegment(1);
    let none = HeaderMap::new();
    assert_eq!(
        segment.extract("/t/acme/x", None, &none).as_deref(),
        Some(&b"acme"[..])
    );
    assert_eq!(segment.extract("/t", None, &none), None);
    assert_eq!(segment.extract("/t//x", None, &none), None, "empty segment");
    assert_eq!(
        KeySpec::PathSegment(0)
            .extract("/acme", None, &none)
            .as_deref(),
        Some(&b"acme"[..])
    );

    let query = KeySpec::from_config(&KeySource::Query("tenant".into())).unwrap();
    let cases = [
        (Some("tenant=acme"), Some(&b"acme"[..])),
        (Some("a=1&tenant=ac%6De&tenant=other"), Some(&b"acme"[..])),
        (Some("%74enant=x"), Some(&b"x"[..])),
        (Some("tenants=acme"), None),
        (Some("tenant"), None),
        (Some("tenant="), None),
        (None, None),
    ];
    for (text, expected) in cases {
        assert_eq!(
            query.extract("/", text, &none).as_deref(),
            expected,
            "{text:?}"
        );
    }
    assert!(KeySpec::from_config(&KeySource::Query(String::new())).is_err());
}

#[test]
fn resolution_uses_default() {
    let counters = FitCounters::new();
    let default = KeyTarget::new(1, None);
    let mut table = KeyTable::new(
        "t",
        KeySpec::PathSegment(0),
        Some(default),
        0,
        sizing(),
        &counters,
    );
    table.insert(b"acme", KeyTarget::new(0, Some(1)));
    let mut tally = FitTally::default();
    assert_eq!(
        table.resolve(Some(b"acme"), &mut tally),
        Resolution::Entry(KeyTarget::new(0, Some(1)))
    );
    assert_eq!(
        table.resolve(Some(b"nope"), &mut tally),
        Resolution::Default(default)
    );
    assert_eq!(
        table.resolve(None, &mut tally),
        Resolution::Default(default)
    );
    assert_eq!(tally.operations, 2, "an absent key costs no lookup");

    let bare = KeyTable::new("t", KeySpec::PathSegment(0), None, 0, sizing(), &counters);
    assert_eq!(bare.resolve(Some(b"acme"), &mut tally), Resolution::Missing);
}

#[derive(Clone, Debug)]
enum Op {
    Insert(u16, u8),
    Remove(u16),
    /// Keeps a clone, as a published snapshot would, and checks it later.
    Snapshot,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..600u16, 0..4u8).prop_map(|(key, upstream)| Op::Insert(key, upstream)),
        3 => (0..600u16).prop_map(Op::Remove),
        1 => Just(Op::Snapshot),
    ]
}

fn key(n: u16) -> Vec<u8> {
    format!("tenant-{n}").into_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn table_agrees_with_map(
        initial in 0usize..20_000,
        ops in prop::collection::vec(op(), 1..400),
    ) {
        let counters = FitCounters::new();
        let mut table = KeyTable::new("t", KeySpec::PathSegment(0), None, initial, sizing(), &counters);
        let mut model: HashMap<Vec<u8>, KeyTarget> = HashMap::new();
        let mut kept: Vec<(KeyTable, HashMap<Vec<u8>, KeyTarget>)> = Vec::new();
        for op in ops {
            match op {
                Op::Insert(n, upstream) => {
                    let target = KeyTarget::new(upstream as usize, None);
                    prop_assert_eq!(table.insert(&key(n), target), model.insert(key(n), target));
                }
                Op::Remove(n) => {
                    prop_assert_eq!(table.remove(&key(n)), model.remove(&key(n)));
                }
                Op::Snapshot => kept.push((table.clone(), model.clone())),
            }
            prop_assert_eq!(table.len(), model.len());
        }
        kept.push((table, model));
        for (table, model) in &kept {
            for n in 0..600u16 {
                prop_assert_eq!(table.get(&key(n)), model.get(&key(n)).copied());
            }
            let mut listed: Vec<_> = table.iter().map(|(k, t)| (k.to_vec(), t)).collect();
            listed.sort();
            let mut expected: Vec<_> = model.iter().map(|(k, t)| (k.clone(), *t)).collect();
            expected.sort();
            prop_assert_eq!(listed, expected);
        }
    }

    #[test]
    fn entry_parser_accepts_generated_files(
        rows in prop::collection::vec(("[a-z0-9._-]{1,12}", "[a-z]{1,8}", proptest::option::of("[0-9.:]{1,15}")), 0..40),
    ) {
        let text: String = rows
            .iter()
            .map(|(k, u, e)| match e {
                Some(e) => format!("{k},{u},{e}\n"),
                None => format!("{k},{u}\n"),
            })
            .collect();
        let parsed = parse_entries(&text).unwrap();
        prop_assert_eq!(parsed.len(), rows.len());
        for (entry, (k, u, e)) in parsed.iter().zip(&rows) {
            prop_assert_eq!(entry.key, k.as_str());
            prop_assert_eq!(entry.upstream, u.as_str());
            prop_assert_eq!(entry.endpoint, e.as_deref());
        }
    }
}
