//! The Latchkey HTTP server: an axum application over a [`latchkey_store::Store`].

pub mod access_report;
pub mod app;
pub mod audit_api;
pub mod audit_log;
pub mod audit_retention;
pub mod audit_sinks;
pub mod auth;
pub mod config;
pub mod connectors;
pub mod error;
pub mod extract;
pub mod identity;
pub mod jobs;
pub mod keyring;
pub mod login;
pub mod metrics;
pub mod policies;
pub mod sealing;
pub mod secret_cache;
pub mod secrets;
pub mod serve;
pub mod state;
pub mod sys;
pub mod tokens;
pub mod users;
pub mod vaults;
