//! The Latchkey HTTP server: an axum application over a [`latchkey_store::Store`].

pub mod app;
pub mod audit_api;
pub mod audit_log;
pub mod auth;
pub mod config;
pub mod connectors;
pub mod error;
pub mod extract;
pub mod identity;
pub mod jobs;
pub mod keyring;
pub mod login;
pub mod offboard;
pub mod policies;
pub mod scim;
pub mod sealing;
pub mod secrets;
pub mod serve;
pub mod state;
pub mod sys;
pub mod tokens;
pub mod users;
pub mod vaults;
