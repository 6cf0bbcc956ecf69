//! The Latchkey HTTP server: an axum application over a [`latchkey_store::Store`].

pub mod app;
pub mod audit_api;
pub mod audit_log;
pub mod auth;
pub mod config;
pub mod error;
pub mod extract;
pub mod keyring;
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
