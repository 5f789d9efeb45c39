//! TLS with rustls and its ring provider. This module terminates TLS on the
//! downstream listeners (SNI certificates, ALPN, optional client
//! certificates), reloads certificates live, connects to upstreams over TLS
//! and runs the file checks of `--validate-config`.

mod certs;
mod check;
mod client;
mod store;
mod terminator;

pub use certs::{load_ca_bundle, load_files, unix_now, CertError, LoadedCertificate, PemPair};
pub use check::{check_files, FileProblem};
pub use client::{client_config, files_fingerprint, EndpointTls, UpstreamTls};
pub use store::{
    CertificateExpiry, CertificateSpec, CertificateStatus, CertificateStore, SniResolver,
};
pub use terminator::{ClientCaStatus, TlsStatus, TlsTerminator, ALPN_PROTOCOLS};

/// Formats seconds since the Unix epoch as RFC 3339 UTC, `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_utc(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let time = seconds.rem_euclid(86_400);
    // Civil-from-days conversion for the proleptic Gregorian calendar.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        time / 3600,
        time % 3600 / 60,
        time % 60
    )
}

#[cfg(test)]
mod tests {
    use super::format_utc;

    #[test]
    fn format_utc_known_instants() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_798_761_599), "2026-12-31T23:59:59Z");
        assert_eq!(format_utc(-1), "1969-12-31T23:59:59Z");
    }
}
