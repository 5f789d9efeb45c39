//! Counters gathered from finished requests and their Prometheus text.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use valkyrie_proxy::{ErrorKind, Observer, RequestRecord};

use crate::service::Control;

/// Request and error totals.
#[derive(Default)]
pub struct RequestCounters {
    requests: AtomicU64,
    errors: AtomicU64,
}

impl Observer for RequestCounters {
    fn on_request(&self, record: &RequestRecord) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if record.error.is_some() || record.status >= 500 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl RequestCounters {
    pub fn render(&self, control: &Control) -> String {
        let mut text = String::new();
        let _ = writeln!(text, "# HELP valkyrie_build_info Build information.");
        let _ = writeln!(text, "# TYPE valkyrie_build_info gauge");
        let _ = writeln!(
            text,
            "valkyrie_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        let _ = writeln!(
            text,
            "# HELP valkyrie_routing_requests_total Requests routed."
        );
        let _ = writeln!(text, "# TYPE valkyrie_routing_requests_total counter");
        let _ = writeln!(
            text,
            "valkyrie_routing_requests_total {}",
            self.requests.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            text,
            "# HELP valkyrie_routing_errors_total Failed requests."
        );
        let _ = writeln!(text, "# TYPE valkyrie_routing_errors_total counter");
        let _ = writeln!(
            text,
            "valkyrie_routing_errors_total {}",
            self.errors.load(Ordering::Relaxed)
        );
        let _ = writeln!(text, "# HELP valkyrie_uptime_seconds Seconds since start.");
        let _ = writeln!(text, "# TYPE valkyrie_uptime_seconds gauge");
        let _ = writeln!(
            text,
            "valkyrie_uptime_seconds {}",
            control.started.elapsed().as_secs()
        );
        let _ = ErrorKind::all();
        text
    }
}
