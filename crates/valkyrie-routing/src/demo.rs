//! `valkyrie-routing demo`: the router on an embedded config, in front of two
//! small upstream servers on loopback, with curl commands to try.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::cli::DemoArgs;
use crate::service::{self, Running};

/// Entries of the demo's key table, in the entry file format.
const DEMO_TENANTS: &str = "acme,alpha\nglobex,beta\n";

/// Returns the demo's config text for the given ports, with its key table
/// read from `tenants_file`.
pub fn demo_config(
    port: u16,
    metrics_port: u16,
    upstream_ports: &[u16],
    tenants_file: &Path,
) -> String {
    let (a, b) = (upstream_ports[0], upstream_ports[1]);
    // A TOML string with whatever quoting and escapes the path needs.
    let tenants_file = toml_edit::Value::from(tenants_file.display().to_string()).to_string();
    format!(
        r#"# The demo router: two upstreams on loopback, routed by path, host and
# a key table, and balanced across both with failover.
[server]
listen = ["127.0.0.1:{port}"]

[metrics]
listen = "127.0.0.1:{metrics_port}"

[logging]
level = "info"
format = "text"
access_log = true

[[upstreams]]
name = "alpha"
endpoints = ["127.0.0.1:{a}"]

[[upstreams]]
name = "beta"
endpoints = ["127.0.0.1:{b}"]

[[upstreams]]
name = "both"
endpoints = ["127.0.0.1:{a}", "127.0.0.1:{b}"]
balance = "round_robin"
connect_timeout = "500ms"

[upstreams.passive_health]
consecutive_failures = 1
ejection_time = "10s"

[[routes]]
name = "alpha-by-path"
path_prefix = "/alpha/"
upstream = "alpha"

[[routes]]
name = "beta-by-path"
path_prefix = "/beta/"
upstream = "beta"

[[routes]]
name = "beta-by-host"
host = "beta.demo.test"
path_prefix = "/"
upstream = "beta"

[[routes]]
name = "balanced"
path_prefix = "/lb/"
upstream = "both"

[[key_tables]]
name = "tenants"
key = {{ header = "x-tenant-id" }}
source = {{ file = {tenants_file} }}
default_upstream = "alpha"

[[routes]]
name = "by-tenant"
path_prefix = "/tenants/"
key_table = "tenants"
"#
    )
}

/// Starts the two demo upstreams and the router, prints what to try, and
/// serves until Ctrl-C.
pub fn run(args: DemoArgs) -> ExitCode {
    // The router reads the entry file once at start, because the demo has
    // no config file to reload, so the file is removed once it listens.
    let tenants = match write_tenants_file() {
        Ok(file) => file,
        Err(error) => {
            eprintln!(
                "failed to write the demo's key-table file in the temporary folder: {error}; \
                 set TMPDIR to a writable folder"
            );
            return ExitCode::FAILURE;
        }
    };
    let text = demo_config(
        args.port,
        args.metrics_port,
        &args.upstream_ports,
        tenants.path(),
    );
    let config = match valkyrie_config::parse_str(&text, "<demo>") {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("the embedded demo config is invalid:\n{errors}");
            return ExitCode::FAILURE;
        }
    };
    let upstream_ports = args.upstream_ports.clone();
    let on_ready = Box::new(move |running: &Running| {
        drop(tenants);
        for (name, port) in [("alpha", upstream_ports[0]), ("beta", upstream_ports[1])] {
            let address = SocketAddr::from(([127, 0, 0, 1], port));
            match std::net::TcpListener::bind(address) {
                Ok(listener) => {
                    listener
                        .set_nonblocking(true)
                        .expect("a new socket can be made non-blocking");
                    let listener = TcpListener::from_std(listener).expect("inside the runtime");
                    tokio::spawn(serve_demo_upstream(listener, name));
                }
                Err(error) => eprintln!("cannot start demo upstream {name} on {address}: {error}"),
            }
        }
        print_hints(running, &upstream_ports);
    });
    service::run(config, None, Some(on_ready))
}

fn write_tenants_file() -> std::io::Result<tempfile::NamedTempFile> {
    let mut file = tempfile::Builder::new()
        .prefix("valkyrie-demo-tenants-")
        .suffix(".csv")
        .tempfile()?;
    file.write_all(DEMO_TENANTS.as_bytes())?;
    file.flush()?;
    Ok(file)
}

fn print_hints(running: &Running, upstream_ports: &[u16]) {
    let router = running.data_addresses[0];
    let metrics = running
        .metrics_address
        .map(|address| address.to_string())
        .unwrap_or_default();
    println!(
        r#"
Valkyrie demo: the router listens on http://{router}, upstream "alpha" on
127.0.0.1:{a} and "beta" on 127.0.0.1:{b}. Try:

  # routing by path
  curl -s http://{router}/alpha/hello
  curl -s http://{router}/beta/hello

  # routing by host
  curl -s -H 'Host: beta.demo.test' http://{router}/anything

  # routing by a key table: the x-tenant-id header picks the upstream
  # (acme -> alpha, globex -> beta, unknown -> alpha by default)
  curl -s -H 'x-tenant-id: globex' http://{router}/tenants/
  # move acme to beta live, without a reload, then look it up
  curl -s -X POST http://{router}/admin/keys -d '{{"table": "tenants", "upsert": {{"acme": "beta"}}}}'
  curl -s -H 'x-tenant-id: acme' http://{router}/tenants/

  # load balancing across both (round robin)
  for i in 1 2 3 4; do curl -s http://{router}/lb/; done

  # failover: stop alpha, then every request lands on beta
  curl -s -X POST http://127.0.0.1:{a}/stop
  for i in 1 2 3 4; do curl -s http://{router}/lb/; done

  # no route (404), HTTP/2 without TLS, health and status
  curl -s -i http://{router}/nowhere
  curl -s --http2-prior-knowledge http://{router}/beta/h2
  curl -s http://{router}/health
  curl -s http://{router}/config/status
  curl -s http://{router}/admin/upstreams
  curl -s http://{metrics}/metrics

Press Ctrl-C to stop.
"#,
        a = upstream_ports[0],
        b = upstream_ports[1],
    );
}

/// Time limit for sending the stop response on the connection that
/// requested the stop.
const STOP_RESPONSE_TIME: Duration = Duration::from_secs(1);

/// Serves one demo upstream: every request gets a JSON line naming the
/// upstream, and `POST /stop` closes the server and its open connections to
/// show failover.
async fn serve_demo_upstream(listener: TcpListener, name: &'static str) {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let stop = Arc::new(stop);
    loop {
        let mut stopped_signal = stopped.clone();
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(_) => continue,
            },
            _ = stopped_signal.changed() => {
                println!("demo upstream {name} stopped");
                return;
            }
        };
        let stop = stop.clone();
        let mut stopped_signal = stopped.clone();
        tokio::spawn(async move {
            // Set by the request that stops the server, so that its own
            // connection stays open until the response is written.
            let stopping_here = Arc::new(AtomicBool::new(false));
            let service = {
                let stopping_here = stopping_here.clone();
                service_fn(move |request: Request<Incoming>| {
                    let (response, stop_requested) = demo_response(name, &request);
                    if stop_requested {
                        // Stops accepting and closes every other connection
                        // now, so that the next routed request finds the
                        // upstream down.
                        stopping_here.store(true, Ordering::Relaxed);
                        let _ = stop.send(true);
                    }
                    std::future::ready(Ok::<_, Infallible>(response))
                })
            };
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = &mut connection => {}
                _ = stopped_signal.changed() => {
                    if stopping_here.load(Ordering::Relaxed) {
                        // The stop response carries `Connection: close`, so
                        // HTTP/1.1 ends the connection once it is written.
                        // HTTP/2 does not, hence the time limit.
                        let _ = tokio::time::timeout(STOP_RESPONSE_TIME, connection).await;
                    }
                }
            }
        });
    }
}

/// Builds a demo upstream's answer; the flag is true for `POST /stop`.
fn demo_response(name: &str, request: &Request<Incoming>) -> (Response<Full<Bytes>>, bool) {
    if request.method() == Method::POST && request.uri().path() == "/stop" {
        let mut response = Response::new(Full::new(Bytes::from(format!(
            "{{\"upstream\":\"{name}\",\"stopped\":true}}\n"
        ))));
        *response.status_mut() = StatusCode::OK;
        response.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
        return (response, true);
    }
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let body = serde_json::json!({
        "upstream": name,
        "method": request.method().as_str(),
        "path": request.uri().path(),
        "host": header("host"),
        "x_forwarded_for": header("x-forwarded-for"),
        "via": header("via"),
    });
    let mut response = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    (response, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_config_is_valid() {
        let text = demo_config(8080, 9090, &[9001, 9002], Path::new("/tmp/tenants.csv"));
        let config = valkyrie_config::parse_str(&text, "<demo>").unwrap();
        assert_eq!(config.routes.len(), 5);
        assert_eq!(config.upstreams.len(), 3);
        assert_eq!(config.key_tables.len(), 1);
    }

    #[test]
    fn demo_config_quotes_tenants_path() {
        let path = Path::new("/tmp/a \"quoted\" \\ folder\twith 'tab' and \u{1}/tenants.csv");
        let text = demo_config(8080, 9090, &[9001, 9002], path);
        let config = valkyrie_config::parse_str(&text, "<demo>").unwrap();
        assert_eq!(
            config.key_tables[0].source,
            valkyrie_config::TableSource::File(path.display().to_string())
        );
    }
}
