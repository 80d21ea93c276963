//! Logging set-up shared by the binaries.

use tracing_subscriber::{fmt, EnvFilter};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl LogFormat {
    pub fn parse(s: &str) -> Option<LogFormat> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

/// Installs a text logger. `RUST_LOG` wins over `default_level` when set. Writes to `logfile`
/// (appending) when given, else to stdout.
pub fn init_logging(default_level: &str, logfile: Option<&std::path::Path>) -> std::io::Result<()> {
    init_logging_as(default_level, logfile, LogFormat::Text)
}

/// Installs a logger writing `format`. `RUST_LOG` wins over `default_level` when set.
pub fn init_logging_as(
    default_level: &str,
    logfile: Option<&std::path::Path>,
    format: LogFormat,
) -> std::io::Result<()> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = fmt().with_env_filter(filter).with_target(false);
    let file = match logfile {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        ),
        None => None,
    };
    let ansi = file.is_none() && std::io::IsTerminal::is_terminal(&std::io::stdout());
    // A logger installed already (tests) is fine: the results are ignored.
    match (format, file) {
        (LogFormat::Text, Some(f)) => {
            let _ = builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(f))
                .try_init();
        }
        (LogFormat::Text, None) => {
            let _ = builder.with_ansi(ansi).try_init();
        }
        (LogFormat::Json, Some(f)) => {
            let _ = builder
                .json()
                .with_writer(std::sync::Mutex::new(f))
                .try_init();
        }
        (LogFormat::Json, None) => {
            let _ = builder.json().try_init();
        }
    }
    Ok(())
}
