//! The snapshot engine: a pinned snapshot outlives a publish and is freed
//! after its last reader, key-table batches publish atomically, and a
//! reload built while a batch was applied keeps the batch.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use valkyrie_proxy::engine::pin;
use valkyrie_proxy::keys::KeyChange;
use valkyrie_proxy::{ProxyState, Snapshot};

/// A folder under the system's temporary folder, removed when dropped.
struct Folder(PathBuf);

impl Folder {
    fn new(name: &str) -> Folder {
        let path =
            std::env::temp_dir().join(format!("valkyrie-engine-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Folder(path)
    }

    fn write(&self, file: &str, text: &str) {
        std::fs::write(self.0.join(file), text).unwrap();
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config(extra_route: bool) -> Arc<valkyrie_config::Config> {
    let mut text = String::from(
        r#"
[[upstreams]]
name = "alpha"
endpoints = ["127.0.0.1:9"]

[[upstreams]]
name = "beta"
endpoints = ["127.0.0.1:10"]

[[routes]]
name = "api"
key_table = "tenants"

[[key_tables]]
name = "tenants"
key = { header = "x-tenant" }
source = { file = "tenants.csv" }
"#,
    );
    if extra_route {
        text.push_str(
            "[[routes]]\nname = \"extra\"\npath_prefix = \"/extra/\"\nupstream = \"alpha\"\n",
        );
    }
    Arc::new(toml::from_str(&text).unwrap())
}

async fn state(folder: &Folder) -> Arc<ProxyState> {
    let snapshot = Snapshot::build_in(config(false), None, Some(&folder.0))
        .await
        .unwrap();
    Arc::new(ProxyState::new(snapshot))
}

fn upsert(key: &str, upstream: &str) -> KeyChange {
    KeyChange {
        key: key.as_bytes().into(),
        target: Some((upstream.to_string(), None)),
    }
}

fn target(snapshot: &Snapshot, key: &str) -> Option<usize> {
    snapshot.key_tables[0]
        .table
        .get(key.as_bytes())
        .map(|target| target.upstream())
}

#[tokio::test]
async fn pinned_snapshot_outlives_publish() {
    let folder = Folder::new("pin");
    folder.write("tenants.csv", "acme,alpha\n");
    let state = state(&folder).await;
    let before = pin(&state);
    assert_eq!(before.generation, 1);

    let next = Snapshot::build_in(
        config(true),
        Some(&state.snapshot.load_full()),
        Some(&folder.0),
    )
    .await
    .unwrap();
    assert_eq!(state.publish(next), 2);

    // The request that pinned the old snapshot still reads its routes.
    assert_eq!(before.generation, 1);
    assert_eq!(before.routes.routes().len(), 1);
    let after = pin(&state);
    assert_eq!(after.generation, 2);
    assert_eq!(after.routes.routes().len(), 2);
    assert_eq!(
        state
            .snapshot_stats
            .last_grace_nanos
            .load(Ordering::Relaxed),
        0,
        "the old snapshot is alive while pinned"
    );

    drop(before);
    drop(after);
    // This thread's reader let go of the old snapshot at the last pin, so
    // dropping the request's pin was the last reference.
    assert!(
        state
            .snapshot_stats
            .last_grace_nanos
            .load(Ordering::Relaxed)
            > 0
    );
}

#[tokio::test]
async fn key_batches_publish_atomically() {
    let folder = Folder::new("batch");
    folder.write("tenants.csv", "acme,alpha\nglobex,alpha\n");
    let state = state(&folder).await;
    let old = pin(&state);

    let changes = vec![
        upsert("acme", "beta"),
        upsert("initech", "beta"),
        KeyChange {
            key: b"globex".as_slice().into(),
            target: None,
        },
        upsert("bad", "gone"),
    ];
    let outcome = state
        .engine
        .apply_keys(&state, "tenants", changes)
        .await
        .unwrap();
    assert_eq!(outcome.upserted, 2);
    assert_eq!(outcome.deleted, 1);
    assert_eq!(outcome.rejected.len(), 1, "{outcome:?}");
    assert_eq!(outcome.generation, 2);

    let new = pin(&state);
    assert_eq!(new.generation, 2);
    assert_eq!(target(&new, "acme"), Some(1));
    assert_eq!(target(&new, "initech"), Some(1));
    assert_eq!(target(&new, "globex"), None);
    // The snapshot a request pinned before is unchanged.
    assert_eq!(target(&old, "acme"), Some(0));
    assert_eq!(target(&old, "globex"), Some(0));
    assert_eq!(target(&old, "initech"), None);

    let missing = state
        .engine
        .apply_keys(&state, "nope", vec![upsert("a", "alpha")])
        .await
        .unwrap();
    assert_eq!(missing.upserted, 0);
    assert_eq!(missing.rejected.len(), 1);
    assert_eq!(state.engine.publisher_stats().pending, 0);
}

#[tokio::test]
async fn reload_keeps_batches_applied_during_build() {
    let folder = Folder::new("reload");
    folder.write("tenants.csv", "acme,alpha\n");
    let state = state(&folder).await;

    // A reload starts building from the current snapshot...
    let current = state.snapshot.load_full();
    let rebuilt = Snapshot::build_in(config(true), Some(&current), Some(&folder.0))
        .await
        .unwrap();
    // ...while a batch is published...
    state
        .engine
        .apply_keys(&state, "tenants", vec![upsert("live", "beta")])
        .await
        .unwrap();
    // ...and the reload publishes after it.
    assert_eq!(state.publish(rebuilt), 3);
    let snapshot = pin(&state);
    assert_eq!(snapshot.routes.routes().len(), 2);
    assert_eq!(target(&snapshot, "live"), Some(1), "the batch survives");

    // A changed file replaces the table and drops the change.
    folder.write("tenants.csv", "fresh,beta\n");
    let rebuilt = Snapshot::build_in(
        config(true),
        Some(&state.snapshot.load_full()),
        Some(&folder.0),
    )
    .await
    .unwrap();
    state.publish(rebuilt);
    let snapshot = pin(&state);
    assert_eq!(target(&snapshot, "live"), None);
    assert_eq!(target(&snapshot, "fresh"), Some(1));
}

#[tokio::test]
async fn idle_publisher_folds_key_deltas() {
    let folder = Folder::new("fold");
    // Enough entries for two shards of about 4,096, so that a small batch
    // leaves its changes in deltas.
    let entries: String = (0..10_000)
        .map(|i| format!("tenant-{i:05},alpha\n"))
        .collect();
    folder.write("tenants.csv", &entries);
    let state = state(&folder).await;

    let changes = (0..10)
        .map(|i| upsert(&format!("tenant-{i:05}"), "beta"))
        .collect();
    let outcome = state
        .engine
        .apply_keys(&state, "tenants", changes)
        .await
        .unwrap();
    assert_eq!(outcome.upserted, 10);
    let batch = pin(&state);
    assert!(batch.generation >= outcome.generation);
    // The fold may publish 10 ms after the batch, before this read.
    let caught_batch = batch.generation == outcome.generation;
    if caught_batch {
        assert_eq!(batch.key_tables[0].table.delta_len(), 10);
    }

    // Liveness, not timing: the publisher folds the deltas on its own.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while state.snapshot.load().key_tables[0].table.delta_len() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "deltas not folded while idle"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let folded = pin(&state);
    assert!(folded.generation > outcome.generation);
    assert!(state.engine.publisher_stats().idle_publishes >= 1);
    assert_eq!(folded.key_tables[0].table.len(), 10_000);
    assert_eq!(target(&folded, "tenant-00003"), Some(1));
    assert_eq!(target(&folded, "tenant-00010"), Some(0));
    // The batch's snapshot still reads its deltas.
    if caught_batch {
        assert_eq!(batch.key_tables[0].table.delta_len(), 10);
    }
    assert_eq!(target(&batch, "tenant-00003"), Some(1));
}

#[tokio::test]
async fn bad_entry_files_fail_the_build() {
    let folder = Folder::new("bad");
    folder.write("tenants.csv", "acme,alpha\n\nbroken\n");
    let error = Snapshot::build_in(config(false), None, Some(&folder.0))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("key table `tenants`"), "{error}");
    assert!(error.contains("tenants.csv: line 3"), "{error}");

    folder.write("tenants.csv", "acme,alpha,127.0.0.1:10\n");
    let error = Snapshot::build_in(config(false), None, Some(&folder.0))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("not an endpoint of upstream `alpha`"),
        "{error}"
    );

    let error = Snapshot::build_in(config(false), None, Some(&folder.0.join("missing")))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("cannot read"), "{error}");
    assert!(error.contains("hint: a relative path starts at"), "{error}");
}
