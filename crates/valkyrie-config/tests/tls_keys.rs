//! Validation of the TLS keys: client certificates, the HTTPS redirect,
//! HSTS and server names shared by two certificates.

mod common;

use common::{expect_error, hint};
use valkyrie_config::{parse_str, ErrorKind};

#[test]
fn tls_keys_accepted() {
    let text = r#"
[server]
redirect_to_https = true

[security]
enable_tls = true
client_ca_path = "/etc/valkyrie/clients.pem"
require_client_cert = true
hsts_max_age = "365d"
"#;
    let config = parse_str(text, "tls.toml").unwrap_or_else(|errors| panic!("{errors}"));
    assert!(config.server.redirect_to_https);
    assert_eq!(
        config.security.client_ca_path.as_deref(),
        Some("/etc/valkyrie/clients.pem")
    );
    assert!(config.security.require_client_cert);
    assert_eq!(
        config.security.hsts_max_age.map(|age| age.0.as_secs()),
        Some(365 * 86_400)
    );
}

#[test]
fn client_cert_required_without_ca() {
    let text = "[security]\nenable_tls = true\nrequire_client_cert = true\n";
    let error = expect_error(text, ErrorKind::MissingKey, 3, 1, "security.client_ca_path");
    assert_eq!(
        error.message,
        "`security` sets `require_client_cert = true` without `client_ca_path`"
    );
}

#[test]
fn redirect_without_tls() {
    let text = "[server]\nredirect_to_https = true\n";
    let error = expect_error(text, ErrorKind::Conflict, 2, 21, "server.redirect_to_https");
    assert!(error.message.contains("security.enable_tls"), "{error}");
    assert!(hint(&error).contains("enable_tls = true"), "{error}");
}

#[test]
fn zero_hsts_max_age_rejected() {
    let text = "[security]\nhsts_max_age = \"0s\"\n";
    expect_error(
        text,
        ErrorKind::InvalidValue,
        2,
        16,
        "security.hsts_max_age",
    );
}

#[test]
fn server_name_in_two_certificates() {
    let text = r#"[security]
enable_tls = true

[[security.certificates]]
server_names = ["api.example.com", "*.api.example.com"]
cert_path = "/a.pem"
key_path = "/a-key.pem"

[[security.certificates]]
server_names = ["www.example.com", "API.example.com"]
cert_path = "/b.pem"
key_path = "/b-key.pem"
"#;
    let error = expect_error(
        text,
        ErrorKind::DuplicateName,
        10,
        36,
        "security.certificates[1].server_names",
    );
    assert_eq!(
        error.message,
        "`security.certificates[1].server_names`: server name `API.example.com` is already listed in `security.certificates[0].server_names` (line 5)"
    );
}

#[test]
fn server_name_twice_in_one_certificate() {
    let text = r#"[[security.certificates]]
server_names = ["a.example.com", "a.example.com"]
cert_path = "/a.pem"
key_path = "/a-key.pem"
"#;
    expect_error(
        text,
        ErrorKind::DuplicateName,
        2,
        34,
        "security.certificates[0].server_names",
    );
}
