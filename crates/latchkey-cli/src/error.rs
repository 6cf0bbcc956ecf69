//! CLI failures and their exit codes.
//!
//! Exit codes are part of the interface scripts rely on:
//! 0 success, 1 error, 2 invalid usage or input, 3 not authenticated, 4 permission denied,
//! 5 not found, 6 server unavailable (sealed, or its audit log cannot be written), 7 approved
//! access needed (a read that a grant would allow, or a request that expired undecided).
//! `lk run` exits with the child's code instead.

use std::fmt;

pub const EXIT_ERROR: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_UNAUTHENTICATED: i32 = 3;
pub const EXIT_PERMISSION_DENIED: i32 = 4;
pub const EXIT_NOT_FOUND: i32 = 5;
pub const EXIT_UNAVAILABLE: i32 = 6;
pub const EXIT_GRANT_REQUIRED: i32 = 7;

#[derive(Debug)]
pub struct CliError {
    pub exit_code: i32,
    pub message: String,
}

impl CliError {
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError {
            exit_code: EXIT_USAGE,
            message: message.into(),
        }
    }

    pub fn other(message: impl Into<String>) -> CliError {
        CliError {
            exit_code: EXIT_ERROR,
            message: message.into(),
        }
    }

    /// Maps an API error response to the exit code for its status.
    pub fn api(status: u16, code: &str, message: &str) -> CliError {
        let exit_code = match status {
            400 | 409 | 413 | 415 | 422 => EXIT_USAGE,
            // 429 is a client refused after too many failed logins.
            401 | 429 => EXIT_UNAUTHENTICATED,
            403 if code == "grant_required" => EXIT_GRANT_REQUIRED,
            403 => EXIT_PERMISSION_DENIED,
            404 => EXIT_NOT_FOUND,
            503 => EXIT_UNAVAILABLE,
            _ => EXIT_ERROR,
        };
        let message = if message.is_empty() {
            format!("server returned {status} ({code})")
        } else {
            message.to_string()
        };
        CliError { exit_code, message }
    }

    /// Returns the error for a reader of standard output that went away, as in
    /// `lk audit search | head -1`. The command then ends with exit code 0 and no message,
    /// like other Unix tools.
    pub fn output_closed() -> CliError {
        CliError {
            exit_code: 0,
            message: String::new(),
        }
    }

    /// Returns true for [`CliError::output_closed`].
    pub fn is_output_closed(&self) -> bool {
        self.exit_code == 0 && self.message.is_empty()
    }

    pub fn context(mut self, prefix: impl fmt::Display) -> CliError {
        self.message = format!("{prefix}: {}", self.message);
        self
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<anyhow::Error> for CliError {
    fn from(error: anyhow::Error) -> CliError {
        CliError::other(format!("{error:#}"))
    }
}

impl From<std::io::Error> for CliError {
    fn from(error: std::io::Error) -> CliError {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            return CliError::output_closed();
        }
        CliError::other(error.to_string())
    }
}

pub type CliResult<T> = Result<T, CliError>;
