//! Log setup: tracing to stdout and optionally to a file that SIGHUP reopens
//! (for logrotate), as JSON or text.

use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};
use valkyrie_config::{LogFormat, LoggingConfig};

/// A log file that can be reopened at the same path after rotation.
#[derive(Clone)]
pub struct LogFile {
    path: PathBuf,
    file: Arc<Mutex<File>>,
}

impl LogFile {
    fn open(path: &Path) -> io::Result<LogFile> {
        if let Some(parent) = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(LogFile {
            path: path.to_path_buf(),
            file: Arc::new(Mutex::new(file)),
        })
    }

    /// Opens the path again, so lines go to the new file after logrotate moved the old one.
    pub fn reopen(&self) -> io::Result<()> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        *self.file.lock().unwrap() = file;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A writer for one log line; holds the file lock while the line is written.
pub struct LogFileWriter<'a>(std::sync::MutexGuard<'a, File>);

impl Write for LogFileWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<'a> MakeWriter<'a> for LogFile {
    type Writer = LogFileWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LogFileWriter(self.file.lock().unwrap())
    }
}

/// Installs the global subscriber. `VALKYRIE_LOG` overrides the configured
/// level with a tracing filter such as `debug` or `info,valkyrie_proxy=trace`.
/// Returns the log file, if any, for reopening on SIGHUP.
pub fn init(config: &LoggingConfig) -> Result<Option<LogFile>, String> {
    let filter_text = std::env::var("VALKYRIE_LOG").unwrap_or_else(|_| config.level.clone());
    let filter = EnvFilter::try_new(&filter_text)
        .map_err(|error| format!("invalid log level `{filter_text}`: {error}"))?;

    let file = match &config.file {
        Some(path) => Some(LogFile::open(Path::new(path)).map_err(|error| {
            format!("cannot open log file `{path}`: {error}; create its folder or change [logging] file")
        })?),
        None => None,
    };

    let stdout_layer = match config.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(io::stdout)
            .boxed(),
        // Colour codes go only to a terminal, not to a pipe or a file that
        // a supervisor collects.
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(io::stdout().is_terminal())
            .with_writer(io::stdout)
            .boxed(),
    };
    let file_layer = file.clone().map(|file| match config.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_ansi(false)
            .with_writer(file)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(file)
            .boxed(),
    });

    tracing_subscriber::registry()
        .with(filter)
        .with(stdout_layer)
        .with(file_layer)
        .try_init()
        .map_err(|error| format!("cannot install the logger: {error}"))?;
    Ok(file)
}
