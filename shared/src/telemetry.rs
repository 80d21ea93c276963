//! Logging set-up shared by the binaries.

use tracing_subscriber::{fmt, EnvFilter};

/// Installs a text logger. `RUST_LOG` wins over `default_level` when set. Writes to `logfile`
/// (appending) when given, else to stdout.
pub fn init_logging(default_level: &str, logfile: Option<&std::path::Path>) -> std::io::Result<()> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = fmt().with_env_filter(filter).with_target(false);
    let result = match logfile {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .try_init()
        }
        None => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .try_init(),
    };
    // A logger installed already (tests) is fine.
    let _ = result;
    Ok(())
}
