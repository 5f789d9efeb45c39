//! TLS test support: a private CA that issues certificates with rcgen,
//! PEM files in a temporary folder, TLS clients with chosen versions, ALPN
//! and client certificates, and a TLS upstream server.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A folder under the system temp folder, removed on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let path = std::env::temp_dir().join(format!(
            "valkyrie-{prefix}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir { path }
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A certificate authority that exists only in the test.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and its key, issued by a [`Ca`].
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        roots
    }

    /// Issues a certificate for `names` (DNS names or IP addresses), valid
    /// from a day ago for a year, usable by servers and clients.
    pub fn issue(&self, names: &[&str]) -> Leaf {
        let now = SystemTime::now();
        self.issue_valid(
            names,
            now - Duration::from_secs(86_400),
            now + Duration::from_secs(365 * 86_400),
        )
    }

    /// Issues a certificate valid between the two instants.
    pub fn issue_valid(
        &self,
        names: &[&str],
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

impl Leaf {
    /// Writes `STEM.pem` and `STEM-key.pem` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}-key.pem"));
        self.write_to(&cert, &key);
        (cert, key)
    }

    /// Writes the certificate and key to the given paths, each file replaced
    /// at once by a rename so a reader never sees half a file.
    pub fn write_to(&self, cert: &Path, key: &Path) {
        replace_file(cert, self.cert_pem.as_bytes());
        replace_file(key, self.key_pem.as_bytes());
    }

    pub fn certified_key(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        use rustls::pki_types::pem::PemObject;
        (
            vec![self.der.clone()],
            PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap(),
        )
    }
}

/// Writes a file through a temporary name and a rename.
pub fn replace_file(path: &Path, bytes: &[u8]) {
    let temporary = path.with_extension("tmp-write");
    std::fs::write(&temporary, bytes).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

/// Builds a client configuration that trusts `roots`.
pub fn client_config(
    roots: RootCertStore,
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&[u8]],
    client_cert: Option<&Leaf>,
) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client_cert {
        Some(leaf) => {
            let (chain, key) = leaf.certified_key();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Arc::new(config)
}

pub const ALL_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Connects and runs the handshake with `server_name` in SNI.
pub async fn connect(
    address: SocketAddr,
    server_name: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(address).await?;
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    let connect = TlsConnector::from(config).connect(name, tcp);
    tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))?
}

/// Returns the leaf certificate the server sent.
pub fn peer_leaf(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// Returns the protocol ALPN agreed on, as text.
pub fn alpn(stream: &TlsStream<TcpStream>) -> Option<String> {
    stream
        .get_ref()
        .1
        .alpn_protocol()
        .map(|protocol| String::from_utf8_lossy(protocol).into_owned())
}

/// A request sender on one TLS connection, HTTP/2 when ALPN chose it.
pub enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

/// A response with its body read.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub version: Version,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Sender {
    pub async fn start(stream: TlsStream<TcpStream>) -> Sender {
        let http2 = alpn(&stream).as_deref() == Some("h2");
        let io = TokioIo::new(stream);
        if http2 {
            let (sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .unwrap();
            tokio::spawn(connection);
            Sender::Http2(sender)
        } else {
            let (sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(connection);
            Sender::Http1(sender)
        }
    }

    /// Sends `GET path` with `host`; fails when the connection does.
    pub async fn get(&mut self, host: &str, path: &str) -> Result<Answer, hyper::Error> {
        let response = match self {
            Sender::Http1(sender) => {
                let request = Request::get(path)
                    .header(http::header::HOST, host)
                    .body(Empty::new())
                    .unwrap();
                sender.ready().await?;
                sender.send_request(request).await?
            }
            Sender::Http2(sender) => {
                let request = Request::get(format!("https://{host}{path}"))
                    .version(Version::HTTP_2)
                    .body(Empty::new())
                    .unwrap();
                sender.ready().await?;
                sender.send_request(request).await?
            }
        };
        let status = response.status().as_u16();
        let version = response.version();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Answer {
            status,
            version,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// What a TLS upstream saw of one request.
#[derive(Clone, Debug)]
pub struct UpstreamSeen {
    pub version: Version,
    /// The URI scheme: `https` in an HTTP/2 request over TLS, none in HTTP/1.1.
    pub scheme: Option<String>,
    pub client_certificate: bool,
    pub server_name: Option<String>,
    pub alpn: Option<String>,
}

/// Starts a TLS upstream on 127.0.0.1 port 0 that returns 200 `tls-upstream`,
/// offers ALPN h2 and http/1.1, and asks for client certificates from
/// `client_roots` when given (without requiring one).
pub async fn tls_upstream(
    leaf: &Leaf,
    client_roots: Option<RootCertStore>,
) -> (SocketAddr, Arc<Mutex<Vec<UpstreamSeen>>>) {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_roots {
        Some(roots) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .allow_unauthenticated()
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let (chain, key) = leaf.certified_key();
    let mut config = builder.with_single_cert(chain, key).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let record = record.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let connection = stream.get_ref().1;
                let facts = UpstreamSeen {
                    version: Version::HTTP_11,
                    scheme: None,
                    client_certificate: connection.peer_certificates().is_some(),
                    server_name: connection.server_name().map(str::to_string),
                    alpn: connection
                        .alpn_protocol()
                        .map(|p| String::from_utf8_lossy(p).into_owned()),
                };
                let service = service_fn(move |request: Request<Incoming>| {
                    let mut facts = facts.clone();
                    facts.version = request.version();
                    facts.scheme = request.uri().scheme_str().map(str::to_string);
                    record.lock().unwrap().push(facts);
                    async move {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("tls-upstream"))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (address, seen)
}

/// Sends a hand-made TLS 1.1 ClientHello (no supported_versions extension)
/// and returns the first bytes the server sends back.
pub async fn tls11_client_hello(address: SocketAddr) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut hello = Vec::new();
    hello.extend_from_slice(&[0x03, 0x02]); // client_version: TLS 1.1
    hello.extend_from_slice(&[0x42; 32]); // random
    hello.push(0); // empty session id
    let suites: [u16; 4] = [0xc013, 0xc014, 0x002f, 0x0035]; // ECDHE-RSA and RSA with AES-CBC-SHA
    hello.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for suite in suites {
        hello.extend_from_slice(&suite.to_be_bytes());
    }
    hello.extend_from_slice(&[1, 0]); // compression: null only
                                      // A signature_algorithms extension, so the server gets as far as the
                                      // version check (without it rustls fails earlier with handshake_failure).
    let schemes: [u16; 3] = [0x0403, 0x0804, 0x0401];
    let mut extension = vec![0x00, 0x0d];
    extension.extend_from_slice(&((schemes.len() * 2 + 2) as u16).to_be_bytes());
    extension.extend_from_slice(&((schemes.len() * 2) as u16).to_be_bytes());
    for scheme in schemes {
        extension.extend_from_slice(&scheme.to_be_bytes());
    }
    hello.extend_from_slice(&(extension.len() as u16).to_be_bytes());
    hello.extend_from_slice(&extension);
    let mut handshake = vec![1]; // ClientHello
    handshake.extend_from_slice(&(hello.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x02]; // handshake record, TLS 1.1
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);

    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(&record).await.unwrap();
    let mut answer = vec![0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("the server answers a TLS 1.1 ClientHello")
        .unwrap_or(0);
    answer.truncate(read);
    answer
}
