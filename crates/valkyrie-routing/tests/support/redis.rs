//! A real `redis-server` on 127.0.0.1 for tests, started and stopped by
//! pid, and a minimal client for the few commands the tests send.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn binary() -> &'static str {
    ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        .into_iter()
        .find(|path| Path::new(path).exists())
        .unwrap_or("redis-server")
}

/// A `redis-server` without persistence, or loading `dump.rdb` from a
/// folder given to [`RedisServer::restart_from`].
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_on(super::free_port())
    }

    /// Starts a server whose `dump.rdb` lives in `folder`.
    pub fn start_in(folder: &Path) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port: super::free_port(),
        };
        server.restart_from(folder);
        server
    }

    pub fn start_on(port: u16) -> RedisServer {
        let mut server = RedisServer { child: None, port };
        server.restart();
        server
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) {
        self.spawn(&std::env::temp_dir(), None);
    }

    /// Starts the server again on the same port with the data of
    /// `folder/dump.rdb`, which [`RedisServer::save`] wrote.
    pub fn restart_from(&mut self, folder: &Path) {
        self.spawn(folder, Some("dump.rdb"));
    }

    fn spawn(&mut self, folder: &Path, dump: Option<&str>) {
        let mut command = Command::new(binary());
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(folder);
        if let Some(dump) = dump {
            command.args(["--dbfilename", dump]);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("cannot start redis-server ({error}); install it with `apt-get install -y redis-server` (scripts/test.sh does this)")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers_ping() {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn answers_ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// Sends one command and returns its reply: the text of a simple
    /// string, integer or bulk string, `None` for a nil bulk string.
    /// Panics on an error reply.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        let (kind, rest) = line.split_at(1);
        match kind {
            "+" | ":" => Some(rest.to_string()),
            "$" if rest == "-1" => None,
            "$" => {
                let length: usize = rest.parse().unwrap();
                let mut body = vec![0u8; length + 2];
                reader.read_exact(&mut body).unwrap();
                body.truncate(length);
                Some(String::from_utf8(body).unwrap())
            }
            _ => panic!("redis-server answered {args:?} with {line}"),
        }
    }

    /// Writes the data set with SAVE to `dump.rdb` in the folder the
    /// server was started in by [`RedisServer::start_in`].
    pub fn save(&self) {
        assert_eq!(self.command(&["SAVE"]).as_deref(), Some("OK"));
    }

    /// Kills the server by pid and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
