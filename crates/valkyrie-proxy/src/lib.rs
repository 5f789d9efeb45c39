//! The data plane: downstream listeners, HTTP/1.1 and HTTP/2 proxying,
//! upstream connection pools and load balancing.

pub mod body;
pub mod breaker;
pub mod engine;
pub mod error;
pub mod framing;
mod handler;
pub mod headers;
pub mod health;
pub mod keys;
pub mod keysync;
pub mod limits;
pub mod net;
pub mod pool;
pub mod ratelimit;
pub mod retry;
pub mod server;
pub mod state;
pub mod tls;
pub mod upstream;

pub use error::{ErrorKind, ProxyError};
pub use server::Server;
pub use state::{Builtins, ListenerKind, Observer, ProxyState, RequestRecord, Snapshot};
