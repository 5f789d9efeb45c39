//! Helpers shared by the integration tests that need a real `redis-server`.

#![allow(dead_code)]

pub mod redis;

use std::net::TcpListener;

/// Returns a port that was free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
