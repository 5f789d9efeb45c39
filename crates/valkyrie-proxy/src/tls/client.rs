//! TLS to upstreams: the rustls client configuration of an upstream (trust
//! roots, client certificate, ALPN) and the handshake on a new connection.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tracing::{error, warn};
use valkyrie_config::{UpstreamConfig, UpstreamProtocol, UpstreamTlsConfig};

use super::certs::{load_ca_bundle, load_pair, parse_certificates, parse_private_key, PemPair};
use crate::error::{ErrorKind, ProxyError};

/// The TLS client settings of one upstream.
pub struct UpstreamTls {
    upstream: Arc<str>,
    /// The configuration, or why it could not be built; connections to the
    /// upstream fail with that reason.
    config: Result<Arc<ClientConfig>, String>,
    /// `server_name` from the config, used for every endpoint.
    server_name: Option<ServerName<'static>>,
}

impl UpstreamTls {
    /// Builds the TLS settings of an upstream with a `[upstreams.tls]`
    /// table, or returns `None` for plain TCP. A file that cannot be used is
    /// logged, and every connection to the upstream then fails with it.
    pub fn from_upstream(config: &UpstreamConfig) -> Option<Arc<UpstreamTls>> {
        let tls = config.tls.as_ref()?;
        let built = client_config(tls, config.protocol).map(Arc::new);
        if let Err(message) = &built {
            error!(upstream = %config.name, error = %message, "upstream TLS settings are not usable; connections to this upstream will fail");
        }
        let server_name = tls.server_name.as_ref().and_then(|name| {
            ServerName::try_from(name.clone())
                .map_err(|_| warn!(upstream = %config.name, server_name = %name, "invalid [upstreams.tls] server_name; using each endpoint's host instead"))
                .ok()
        });
        Some(Arc::new(UpstreamTls {
            upstream: config.name.as_str().into(),
            config: built,
            server_name,
        }))
    }

    /// Returns the settings for one endpoint, `host:port`: the configured
    /// `server_name`, or else the endpoint's host, is sent in SNI and checked
    /// against the certificate.
    pub fn endpoint(self: &Arc<Self>, address: &str) -> EndpointTls {
        let server_name = self
            .server_name
            .clone()
            .or_else(|| ServerName::try_from(endpoint_host(address).to_string()).ok());
        EndpointTls {
            upstream: self.clone(),
            server_name,
        }
    }
}

/// Hashes the contents of the CA bundle, client certificate and client key
/// files that `config` names, so a reload can tell that one was replaced.
/// A file that cannot be read hashes as missing.
pub fn files_fingerprint(config: &UpstreamConfig) -> u64 {
    use std::hash::{Hash, Hasher};
    let Some(tls) = config.tls.as_ref() else {
        return 0;
    };
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for path in [&tls.ca_path, &tls.client_cert_path, &tls.client_key_path]
        .into_iter()
        .flatten()
    {
        path.hash(&mut hasher);
        std::fs::read(path).ok().hash(&mut hasher);
    }
    hasher.finish()
}

/// Returns the host of `host:port`, without the brackets of an IPv6 address.
fn endpoint_host(address: &str) -> &str {
    let host = match address.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => address,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

/// The TLS settings used for connections to one endpoint.
#[derive(Clone)]
pub struct EndpointTls {
    upstream: Arc<UpstreamTls>,
    server_name: Option<ServerName<'static>>,
}

impl EndpointTls {
    /// Runs the client side of a handshake on a new connection, within `timeout`.
    pub async fn handshake(
        &self,
        stream: TcpStream,
        timeout: Duration,
    ) -> Result<TlsStream<TcpStream>, ProxyError> {
        let config = self.upstream.config.as_ref().map_err(|message| {
            ProxyError::new(
                ErrorKind::ConnectFailed,
                format!(
                    "TLS settings of upstream `{}` are not usable: {message}",
                    self.upstream.upstream
                ),
            )
            .nothing_sent()
        })?;
        let Some(server_name) = self.server_name.clone() else {
            return Err(ProxyError::new(
                ErrorKind::ConnectFailed,
                "the endpoint host is not a valid TLS server name; set [upstreams.tls] server_name",
            )
            .nothing_sent());
        };
        let peer = stream.peer_addr().ok();
        let connector = TlsConnector::from(config.clone());
        match tokio::time::timeout(timeout, connector.connect(server_name, stream)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(error)) => Err(ProxyError::new(
                ErrorKind::ConnectFailed,
                format!(
                    "TLS handshake with {} failed: {error}",
                    peer.map_or_else(|| "the endpoint".to_string(), |p| p.to_string())
                ),
            )
            .nothing_sent()),
            Err(_) => Err(ProxyError::new(
                ErrorKind::ConnectTimeout,
                format!("TLS handshake timed out after {timeout:?}"),
            )
            .nothing_sent()),
        }
    }
}

/// Builds the client configuration of an upstream: its CA bundle or the
/// system roots, an optional client certificate, and ALPN for its protocol.
pub fn client_config(
    tls: &UpstreamTlsConfig,
    protocol: UpstreamProtocol,
) -> Result<ClientConfig, String> {
    let roots = match &tls.ca_path {
        Some(path) => load_ca_bundle(Path::new(path)).map_err(|error| error.to_string())?,
        None => system_roots().clone(),
    };
    let builder = ClientConfig::builder_with_provider(super::certs::provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("invalid TLS versions: {error}"))?
        .with_root_certificates(roots);
    let mut config = match (&tls.client_cert_path, &tls.client_key_path) {
        (Some(cert_path), Some(key_path)) => {
            let (cert_path, key_path) = (Path::new(cert_path), Path::new(key_path));
            let pair = PemPair::read(cert_path, key_path).map_err(|error| error.to_string())?;
            // Checks that the key belongs to the certificate.
            load_pair(&pair, cert_path, key_path).map_err(|error| error.to_string())?;
            let chain = parse_certificates(&pair.cert, cert_path).map_err(|e| e.to_string())?;
            let key = parse_private_key(&pair.key, key_path).map_err(|e| e.to_string())?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|error| format!("unusable client certificate: {error}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = match protocol {
        UpstreamProtocol::Http2 => vec![b"h2".to_vec()],
        UpstreamProtocol::Http1 => vec![b"http/1.1".to_vec()],
    };
    Ok(config)
}

/// Returns the operating system's trust store, or the Mozilla roots
/// compiled into the binary when the system has none (minimal containers).
fn system_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            warn!(%error, "reading a system CA certificate failed");
        }
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            warn!("no system CA certificates found; using the compiled-in Mozilla roots");
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        roots
    })
}

#[cfg(test)]
mod tests {
    use super::endpoint_host;

    #[test]
    fn endpoint_host_strips_port_and_brackets() {
        assert_eq!(endpoint_host("api.internal:443"), "api.internal");
        assert_eq!(endpoint_host("127.0.0.1:8443"), "127.0.0.1");
        assert_eq!(endpoint_host("[::1]:8443"), "::1");
        assert_eq!(endpoint_host("api.internal"), "api.internal");
    }
}
