//! TLS termination and TLS to upstreams, with certificates made by a test
//! CA: SNI selection, versions, ALPN, client certificates, reloads that keep
//! connections open, HSTS and the HTTPS redirect.

mod common;
mod tls_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rustls::version::{TLS12, TLS13};
use tls_support::{
    client_config, connect, peer_leaf, tls11_client_hello, tls_upstream, Ca, Leaf, Sender, TempDir,
    ALL_VERSIONS,
};
use valkyrie_proxy::server::bind;
use valkyrie_proxy::tls::TlsTerminator;
use valkyrie_proxy::{ListenerKind, ProxyState, Server, Snapshot};

/// A router with a TLS listener and a plain one, both on 127.0.0.1 port 0.
struct TlsRouter {
    tls_address: SocketAddr,
    plain_address: SocketAddr,
    tls: Arc<TlsTerminator>,
    config: valkyrie_config::Config,
    _server: Server,
}

async fn tls_router(config_text: &str) -> TlsRouter {
    let config: valkyrie_config::Config = toml::from_str(config_text).expect("test config parses");
    let snapshot = Snapshot::build(Arc::new(config.clone()), None)
        .await
        .expect("snapshot builds");
    let server = Server::new(Arc::new(ProxyState::new(snapshot)));
    let tls = TlsTerminator::new(&config.security).expect("certificates load");
    let tls_listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let tls_address = tls_listener.local_addr().unwrap();
    server.set_https_port(tls_address.port());
    server.spawn_tls_listener(tls_listener, ListenerKind::DataPlane, tls.clone());
    let plain_listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let plain_address = plain_listener.local_addr().unwrap();
    server.spawn_listener(plain_listener, ListenerKind::DataPlane);
    TlsRouter {
        tls_address,
        plain_address,
        tls,
        config,
        _server: server,
    }
}

/// Certificates on disk for the listener tests: a default one and two SNI
/// entries, all issued by one CA.
struct Site {
    dir: TempDir,
    ca: Ca,
    default: Leaf,
    api: Leaf,
    wildcard: Leaf,
}

impl Site {
    fn new() -> Site {
        let dir = TempDir::new("tls");
        let ca = Ca::new("Valkyrie test CA");
        // The default certificate names every host the fallback tests use,
        // so clients can verify it there too.
        let default = ca.issue(&[
            "default.test",
            "other.test",
            "deep.x.wild.test",
            "127.0.0.1",
        ]);
        let api = ca.issue(&["api.test"]);
        let wildcard = ca.issue(&["*.wild.test"]);
        default.write(&dir.path, "default");
        api.write(&dir.path, "api");
        wildcard.write(&dir.path, "wild");
        Site {
            dir,
            ca,
            default,
            api,
            wildcard,
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// Returns the `[security]` section with the three certificates and `extra` lines.
    fn security(&self, extra: &str) -> String {
        format!(
            r#"
[security]
enable_tls = true
tls_cert_path = "{}"
tls_key_path = "{}"
{extra}

[[security.certificates]]
server_names = ["api.test"]
cert_path = "{}"
key_path = "{}"

[[security.certificates]]
server_names = ["*.wild.test"]
cert_path = "{}"
key_path = "{}"
"#,
            self.path("default.pem"),
            self.path("default-key.pem"),
            self.path("api.pem"),
            self.path("api-key.pem"),
            self.path("wild.pem"),
            self.path("wild-key.pem"),
        )
    }

    fn client(&self) -> Arc<rustls::ClientConfig> {
        client_config(self.ca.roots(), ALL_VERSIONS, &[b"h2", b"http/1.1"], None)
    }
}

fn routes(upstream: SocketAddr) -> String {
    format!(
        r#"
[[upstreams]]
name = "backend"
endpoints = ["{upstream}"]

[[routes]]
name = "all"
path_prefix = "/"
upstream = "backend"
"#
    )
}

#[tokio::test]
async fn sni_selects_certificate_with_fallback() {
    let site = Site::new();
    let backend = common::upstream("backend", common::Behavior::Name).await;
    let router = tls_router(&format!("{}{}", site.security(""), routes(backend.address))).await;
    let client = site.client();

    let cases = [
        ("api.test", &site.api, "exact name"),
        ("a.wild.test", &site.wildcard, "wildcard"),
        (
            "deep.x.wild.test",
            &site.default,
            "two labels below the wildcard",
        ),
        ("other.test", &site.default, "unknown name"),
        ("127.0.0.1", &site.default, "no SNI (IP address)"),
    ];
    for (name, expected, case) in cases {
        let stream = connect(router.tls_address, name, client.clone())
            .await
            .unwrap_or_else(|error| panic!("{case}: handshake failed: {error}"));
        assert!(
            peer_leaf(&stream) == expected.der,
            "{case}: wrong certificate for {name}"
        );
    }
}

#[tokio::test]
async fn tls11_client_hello_rejected() {
    let site = Site::new();
    let backend = common::upstream("backend", common::Behavior::Name).await;
    let router = tls_router(&format!("{}{}", site.security(""), routes(backend.address))).await;
    let answer = tls11_client_hello(router.tls_address).await;
    // An alert record (type 21) with level fatal (2) and protocol_version (70),
    // and never a ServerHello (a handshake record, type 22).
    assert!(!answer.is_empty(), "the server closed without an alert");
    assert_eq!(answer[0], 21, "expected an alert record, got {answer:?}");
    assert_eq!(
        &answer[5..7],
        &[2, 70],
        "expected protocol_version, got {answer:?}"
    );
}

#[tokio::test]
async fn min_version_13_rejects_tls12_client() {
    let site = Site::new();
    let backend = common::upstream("backend", common::Behavior::Name).await;
    let config = format!(
        "{}{}",
        site.security("min_tls_version = \"1.3\""),
        routes(backend.address)
    );
    let router = tls_router(&config).await;

    let tls12_only = client_config(site.ca.roots(), &[&TLS12], &[b"http/1.1"], None);
    let refused = connect(router.tls_address, "api.test", tls12_only).await;
    assert!(
        refused.is_err(),
        "a TLS 1.2 client connected to a 1.3-only listener"
    );

    let tls13 = client_config(site.ca.roots(), &[&TLS13], &[b"http/1.1"], None);
    let stream = connect(router.tls_address, "api.test", tls13)
        .await
        .unwrap();
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );

    let default_router =
        tls_router(&format!("{}{}", site.security(""), routes(backend.address))).await;
    let tls12_only = client_config(site.ca.roots(), &[&TLS12], &[b"http/1.1"], None);
    let stream = connect(default_router.tls_address, "api.test", tls12_only)
        .await
        .expect("min_tls_version 1.2 accepts TLS 1.2");
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
}

#[tokio::test]
async fn alpn_selects_http2_or_http1() {
    let site = Site::new();
    let backend = common::upstream("backend", common::Behavior::Name).await;
    let router = tls_router(&format!("{}{}", site.security(""), routes(backend.address))).await;

    // What the client offers, what ALPN agrees on, the HTTP version used.
    type Offer<'a> = (&'a [&'a [u8]], Option<&'a str>, http::Version);
    let offers: [Offer; 3] = [
        (&[b"h2", b"http/1.1"], Some("h2"), http::Version::HTTP_2),
        (&[b"http/1.1"], Some("http/1.1"), http::Version::HTTP_11),
        (&[], None, http::Version::HTTP_11),
    ];
    for (offer, agreed, version) in offers {
        let client = client_config(site.ca.roots(), ALL_VERSIONS, offer, None);
        let stream = connect(router.tls_address, "api.test", client)
            .await
            .unwrap();
        assert_eq!(tls_support::alpn(&stream).as_deref(), agreed);
        let mut sender = Sender::start(stream).await;
        let answer = sender.get("api.test", "/alpn").await.unwrap();
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.version, version);
    }

    let seen = backend.requests();
    assert_eq!(seen.len(), 3);
    for request in &seen {
        assert_eq!(request.headers["x-forwarded-proto"], "https");
        assert_eq!(request.headers["x-forwarded-host"], "api.test");
    }
}

#[tokio::test]
async fn hsts_added_on_tls_only() {
    let site = Site::new();
    let backend = common::upstream("backend", common::Behavior::Name).await;
    let config = format!(
        "{}{}",
        site.security("hsts_max_age = \"365d\""),
        routes(backend.address)
    );
    let router = tls_router(&config).await;

    let stream = connect(router.tls_address, "api.test", site.client())
        .await
        .unwrap();
    let answer = Sender::start(stream)
        .await
        .get("api.test", "/")
        .await
        .unwrap();
    assert_eq!(
        answer.headers["strict-transport-security"],
        "max-age=31536000"
    );

    let plain = common::client()
        .get(format!("http://{}/", router.plain_address))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 200);
    assert!(plain.headers().get("strict-transport-security").is_none());
    assert_eq!(
        backend.requests().last().unwrap().headers["x-forwarded-proto"],
        "http"
    );
}

#[tokio::test]
async fn plain_http_redirected_to_https() {
    let site = Site::new();
    let backend = common::upstream("backend", common::Behavior::Name).await;
    let config = format!(
        "[server]\nredirect_to_https = true\n{}{}",
        site.security(""),
        routes(backend.address)
    );
    let router = tls_router(&config).await;
    let port = router.tls_address.port();

    let client = common::client();
    let response = client
        .get(format!("http://{}/shop/cart?item=7", router.plain_address))
        .header("host", "shop.test:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 308);
    assert_eq!(
        response.headers()["location"],
        format!("https://shop.test:{port}/shop/cart?item=7").as_str()
    );
    // The connection stays usable after a redirect.
    let again = client
        .get(format!("http://{}/", router.plain_address))
        .header("host", "shop.test")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 308);
    assert_eq!(
        backend.request_count(),
        0,
        "a redirected request reached the upstream"
    );

    // Health probes keep working over plain HTTP.
    let health = client
        .get(format!("http://{}/health", router.plain_address))
        .send()
        .await
        .unwrap();
    assert_ne!(health.status(), 308);

    let stream = connect(router.tls_address, "api.test", site.client())
        .await
        .unwrap();
    let answer = Sender::start(stream)
        .await
        .get("api.test", "/shop")
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
}

/// Waits until a new handshake for `name` gets `expected`, for up to 10 s.
async fn wait_for_certificate(
    router: &TlsRouter,
    site: &Site,
    name: &str,
    expected: &Leaf,
) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(stream) = connect(router.tls_address, name, site.client()).await {
            if peer_leaf(&stream) == expected.der {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn reload_swaps_certificate_keeping_connections() {
    let site = Site::new();
    let backend = common::upstream("backend", common::Behavior::Name).await;
    let router = tls_router(&format!("{}{}", site.security(""), routes(backend.address))).await;

    let http1 = client_config(site.ca.roots(), ALL_VERSIONS, &[b"http/1.1"], None);
    let mut open_http1 = Sender::start(
        connect(router.tls_address, "api.test", http1)
            .await
            .unwrap(),
    )
    .await;
    let mut open_http2 = Sender::start(
        connect(router.tls_address, "api.test", site.client())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        open_http1.get("api.test", "/before").await.unwrap().status,
        200
    );
    assert_eq!(
        open_http2.get("api.test", "/before").await.unwrap().status,
        200
    );

    let renewed = site.ca.issue(&["api.test"]);
    renewed.write(&site.dir.path, "api");
    let errors = router.tls.reload(&router.config.security);
    assert!(errors.is_empty(), "{errors:?}");

    let stream = connect(router.tls_address, "api.test", site.client())
        .await
        .unwrap();
    assert!(
        peer_leaf(&stream) == renewed.der,
        "a new handshake got the old certificate"
    );
    assert_eq!(
        open_http1.get("api.test", "/after").await.unwrap().status,
        200
    );
    assert_eq!(
        open_http2.get("api.test", "/after").await.unwrap().status,
        200
    );
}

#[tokio::test]
async fn bad_replacement_keeps_serving_certificate() {
    let site = Site::new();
    let backend = common::upstream("backend", common::Behavior::Name).await;
    let router = tls_router(&format!("{}{}", site.security(""), routes(backend.address))).await;

    // A key that belongs to another certificate.
    let other = site.ca.issue(&["api.test"]);
    tls_support::replace_file(&site.dir.join("api-key.pem"), other.key_pem.as_bytes());
    let errors = router.tls.reload(&router.config.security);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("does not match"), "{errors:?}");

    let stream = connect(router.tls_address, "api.test", site.client())
        .await
        .unwrap();
    assert!(
        peer_leaf(&stream) == site.api.der,
        "the bad pair replaced the certificate"
    );
    let status = router.tls.status();
    let api = status
        .certificates
        .iter()
        .find(|certificate| certificate.names == ["api.test"])
        .unwrap();
    assert!(api
        .last_error
        .as_deref()
        .unwrap()
        .contains("does not match"));
    assert!(api.not_after.is_some());

    // An expired certificate does not replace a valid one either.
    let now = SystemTime::now();
    let expired = site.ca.issue_valid(
        &["api.test"],
        now - Duration::from_secs(10 * 86_400),
        now - Duration::from_secs(86_400),
    );
    expired.write(&site.dir.path, "api");
    let errors = router.tls.reload(&router.config.security);
    assert!(
        errors.iter().any(|error| error.contains("expired")),
        "{errors:?}"
    );
    let stream = connect(router.tls_address, "api.test", site.client())
        .await
        .unwrap();
    assert!(peer_leaf(&stream) == site.api.der);

    // Fixing the files clears the error.
    let fixed = site.ca.issue(&["api.test"]);
    fixed.write(&site.dir.path, "api");
    assert!(router.tls.reload(&router.config.security).is_empty());
    let status = router.tls.status();
    assert!(status.certificates.iter().all(|c| c.last_error.is_none()));
}

#[tokio::test]
async fn file_replaced_on_disk_is_picked_up() {
    let site = Site::new();
    let backend = common::upstream("backend", common::Behavior::Name).await;
    let router = tls_router(&format!("{}{}", site.security(""), routes(backend.address))).await;
    router.tls.spawn_watcher(Duration::from_millis(100));

    let mut open = Sender::start(
        connect(router.tls_address, "a.wild.test", site.client())
            .await
            .unwrap(),
    )
    .await;
    let renewed = site.ca.issue(&["*.wild.test"]);
    renewed.write(&site.dir.path, "wild");
    assert!(
        wait_for_certificate(&router, &site, "a.wild.test", &renewed).await,
        "the replaced files were not picked up"
    );
    assert_eq!(open.get("a.wild.test", "/").await.unwrap().status, 200);
}

#[tokio::test]
async fn symlink_swap_is_picked_up() {
    // The layout of a Kubernetes secret volume: the files are links into
    // `..data`, itself a link to a timestamped folder that an update
    // replaces with one rename.
    use std::os::unix::fs::symlink;

    let site = Site::new();
    let volume = TempDir::new("secret-volume");
    let first = volume.join("..2024_01");
    std::fs::create_dir(&first).unwrap();
    site.api.write(&first, "tls");
    symlink("..2024_01", volume.join("..data")).unwrap();
    symlink("..data/tls.pem", volume.join("tls.crt")).unwrap();
    symlink("..data/tls-key.pem", volume.join("tls.key")).unwrap();

    let backend = common::upstream("backend", common::Behavior::Name).await;
    let security = format!(
        "[security]\nenable_tls = true\ntls_cert_path = \"{}\"\ntls_key_path = \"{}\"\n",
        volume.join("tls.crt").display(),
        volume.join("tls.key").display()
    );
    let router = tls_router(&format!("{security}{}", routes(backend.address))).await;
    router.tls.spawn_watcher(Duration::from_millis(100));
    let stream = connect(router.tls_address, "api.test", site.client())
        .await
        .unwrap();
    assert!(peer_leaf(&stream) == site.api.der);

    let renewed = site.ca.issue(&["api.test"]);
    let second = volume.join("..2024_02");
    std::fs::create_dir(&second).unwrap();
    renewed.write(&second, "tls");
    symlink("..2024_02", volume.join("..data_tmp")).unwrap();
    std::fs::rename(volume.join("..data_tmp"), volume.join("..data")).unwrap();
    std::fs::remove_dir_all(&first).unwrap();

    assert!(
        wait_for_certificate(&router, &site, "api.test", &renewed).await,
        "the symlink swap was not picked up"
    );
}

/// Listener settings for client certificates from `clients`.
fn mtls_security(site: &Site, ca_file: &str, required: bool) -> String {
    site.security(&format!(
        "client_ca_path = \"{}\"\nrequire_client_cert = {required}",
        site.path(ca_file)
    ))
}

/// Sends one request on a new connection; returns the status, or `None`
/// when the handshake or the request failed.
async fn request_status(address: SocketAddr, config: Arc<rustls::ClientConfig>) -> Option<u16> {
    let stream = connect(address, "api.test", config).await.ok()?;
    let mut sender = Sender::start(stream).await;
    sender
        .get("api.test", "/")
        .await
        .ok()
        .map(|answer| answer.status)
}

#[tokio::test]
async fn client_certificates_verified() {
    let site = Site::new();
    let clients = Ca::new("client CA");
    std::fs::write(site.dir.join("clients.pem"), clients.pem()).unwrap();
    let good = clients.issue(&["client.test"]);
    let foreign = Ca::new("foreign CA").issue(&["client.test"]);
    let backend = common::upstream("backend", common::Behavior::Name).await;

    let required = tls_router(&format!(
        "{}{}",
        mtls_security(&site, "clients.pem", true),
        routes(backend.address)
    ))
    .await;
    let with =
        |leaf: Option<&Leaf>| client_config(site.ca.roots(), ALL_VERSIONS, &[b"http/1.1"], leaf);
    assert_eq!(
        request_status(required.tls_address, with(Some(&good))).await,
        Some(200)
    );
    assert_eq!(request_status(required.tls_address, with(None)).await, None);
    assert_eq!(
        request_status(required.tls_address, with(Some(&foreign))).await,
        None
    );
    let tls12 = client_config(site.ca.roots(), &[&TLS12], &[b"http/1.1"], None);
    assert_eq!(request_status(required.tls_address, tls12).await, None);

    let optional = tls_router(&format!(
        "{}{}",
        mtls_security(&site, "clients.pem", false),
        routes(backend.address)
    ))
    .await;
    assert_eq!(
        request_status(optional.tls_address, with(Some(&good))).await,
        Some(200)
    );
    assert_eq!(
        request_status(optional.tls_address, with(None)).await,
        Some(200)
    );
    assert_eq!(
        request_status(optional.tls_address, with(Some(&foreign))).await,
        None
    );
}

#[tokio::test]
async fn client_ca_replaced_on_disk() {
    let site = Site::new();
    let old_clients = Ca::new("old client CA");
    let new_clients = Ca::new("new client CA");
    std::fs::write(site.dir.join("clients.pem"), old_clients.pem()).unwrap();
    let backend = common::upstream("backend", common::Behavior::Name).await;
    let router = tls_router(&format!(
        "{}{}",
        mtls_security(&site, "clients.pem", true),
        routes(backend.address)
    ))
    .await;
    router.tls.spawn_watcher(Duration::from_millis(100));
    let new_client = new_clients.issue(&["client.test"]);
    let config = client_config(
        site.ca.roots(),
        ALL_VERSIONS,
        &[b"http/1.1"],
        Some(&new_client),
    );
    assert_eq!(
        request_status(router.tls_address, config.clone()).await,
        None
    );

    tls_support::replace_file(&site.dir.join("clients.pem"), new_clients.pem().as_bytes());
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut status = None;
    while Instant::now() < deadline && status.is_none() {
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = request_status(router.tls_address, config.clone()).await;
    }
    assert_eq!(
        status,
        Some(200),
        "the new client CA bundle was not picked up"
    );
}

/// Returns a router config with one upstream reached over TLS.
fn tls_upstream_config(address: SocketAddr, protocol: &str, tls: &str) -> String {
    format!(
        r#"
[[upstreams]]
name = "secure"
endpoints = ["{address}"]
protocol = "{protocol}"
tls = {{ {tls} }}

[[routes]]
name = "all"
path_prefix = "/"
upstream = "secure"
"#
    )
}

#[tokio::test]
async fn upstream_tls_with_private_ca() {
    let dir = TempDir::new("upstream-tls");
    let ca = Ca::new("upstream CA");
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let server_leaf = ca.issue(&["backend.internal"]);
    let client_leaf = ca.issue(&["valkyrie.internal"]);
    let (client_cert, client_key) = client_leaf.write(&dir.path, "client");
    let (address, seen) = tls_upstream(&server_leaf, Some(ca.roots())).await;
    let ca_path = dir.join("ca.pem").display().to_string();

    for protocol in ["http1", "http2"] {
        let tls = format!(
            "ca_path = \"{ca_path}\", server_name = \"backend.internal\", client_cert_path = \"{}\", client_key_path = \"{}\"",
            client_cert.display(),
            client_key.display()
        );
        let router = common::router(&tls_upstream_config(address, protocol, &tls)).await;
        let response = common::client().get(router.url("/x")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{protocol}");
        assert_eq!(response.text().await.unwrap(), "tls-upstream");
        let last = seen.lock().unwrap().last().cloned().unwrap();
        let (version, alpn) = match protocol {
            "http2" => (http::Version::HTTP_2, "h2"),
            _ => (http::Version::HTTP_11, "http/1.1"),
        };
        assert_eq!(last.version, version, "{protocol}");
        if protocol == "http2" {
            assert_eq!(last.scheme.as_deref(), Some("https"));
        }
        assert_eq!(last.alpn.as_deref(), Some(alpn), "{protocol}");
        assert_eq!(last.server_name.as_deref(), Some("backend.internal"));
        assert!(
            last.client_certificate,
            "{protocol}: no client certificate sent"
        );
    }
}

#[tokio::test]
async fn upstream_tls_rejects_unknown_ca_and_name() {
    let dir = TempDir::new("upstream-tls-bad");
    let ca = Ca::new("upstream CA");
    let other = Ca::new("other CA");
    std::fs::write(dir.join("other.pem"), other.pem()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let (address, seen) = tls_upstream(&ca.issue(&["backend.internal"]), None).await;

    let cases = [
        (
            format!(
                "ca_path = \"{}\", server_name = \"backend.internal\"",
                dir.join("other.pem").display()
            ),
            "unknown CA",
        ),
        (
            format!(
                "ca_path = \"{}\", server_name = \"wrong.internal\"",
                dir.join("ca.pem").display()
            ),
            "wrong name",
        ),
        (
            format!("ca_path = \"{}\"", dir.join("ca.pem").display()),
            "IP endpoint without IP SAN",
        ),
        (
            format!("ca_path = \"{}\"", dir.join("missing.pem").display()),
            "missing CA file",
        ),
    ];
    for (tls, case) in cases {
        let router = common::router(&tls_upstream_config(address, "http1", &tls)).await;
        let response = common::client().get(router.url("/x")).send().await.unwrap();
        assert_eq!(response.status(), 502, "{case}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "connect_failed", "{case}: {body}");
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "a request reached the upstream"
    );
}

/// A reload rebuilds an upstream whose CA file was replaced, although its
/// settings are the same.
#[tokio::test]
async fn upstream_ca_file_reread_on_reload() {
    let dir = TempDir::new("upstream-ca-reload");
    let ca = Ca::new("upstream CA");
    let other = Ca::new("other CA");
    std::fs::write(dir.join("ca.pem"), other.pem()).unwrap();
    let (address, _seen) = tls_upstream(&ca.issue(&["backend.internal"]), None).await;
    let tls = format!(
        "ca_path = \"{}\", server_name = \"backend.internal\"",
        dir.join("ca.pem").display()
    );
    let config_text = tls_upstream_config(address, "http1", &tls);
    let router = common::router(&config_text).await;
    let response = common::client().get(router.url("/x")).send().await.unwrap();
    assert_eq!(response.status(), 502, "the wrong CA was accepted");

    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let state = router.state();
    let config: valkyrie_config::Config = toml::from_str(&config_text).unwrap();
    let current = state.snapshot.load_full();
    let next = Snapshot::build(Arc::new(config), Some(&current))
        .await
        .unwrap();
    assert!(
        !Arc::ptr_eq(&next.upstreams[0], &current.upstreams[0]),
        "the upstream was kept although its CA file changed"
    );
    state.publish(next);
    let response = common::client().get(router.url("/x")).send().await.unwrap();
    assert_eq!(response.status(), 200, "the new CA file was not read");

    // Unchanged files keep the upstream and its pool.
    let current = state.snapshot.load_full();
    let config: valkyrie_config::Config = toml::from_str(&config_text).unwrap();
    let next = Snapshot::build(Arc::new(config), Some(&current))
        .await
        .unwrap();
    assert!(Arc::ptr_eq(&next.upstreams[0], &current.upstreams[0]));
}

#[tokio::test]
async fn status_and_expiry_report_certificates() {
    let site = Site::new();
    let backend = common::upstream("backend", common::Behavior::Name).await;
    let router = tls_router(&format!("{}{}", site.security(""), routes(backend.address))).await;
    let status = router.tls.status();
    assert_eq!(status.min_version, "1.2");
    assert_eq!(status.certificates.len(), 3);
    assert!(status.certificates[0].default);
    assert_eq!(status.certificates[1].names, ["api.test"]);
    assert_eq!(status.certificates[2].dns_names, ["*.wild.test"]);
    let expiry = router.tls.expiry();
    let names: Vec<&str> = expiry.iter().map(|entry| entry.name.as_str()).collect();
    assert_eq!(names, ["default", "api.test", "*.wild.test"]);
    for entry in &expiry {
        // Issued for a year from now.
        assert!(
            entry.seconds > 364 * 86_400 && entry.seconds <= 365 * 86_400,
            "{entry:?}"
        );
    }
}

#[tokio::test]
async fn startup_fails_on_unusable_certificate() {
    let site = Site::new();
    let mut config: valkyrie_config::Config = toml::from_str(&site.security("")).unwrap();
    config.security.certificates[0].key_path = site.path("wild-key.pem");
    let error = TlsTerminator::new(&config.security)
        .err()
        .expect("a mismatched key is rejected");
    assert!(error.contains("does not match"), "{error}");

    config.security.certificates[0].key_path = site.path("missing-key.pem");
    let error = TlsTerminator::new(&config.security)
        .err()
        .expect("a missing key is rejected");
    assert!(error.contains("cannot read"), "{error}");
}
