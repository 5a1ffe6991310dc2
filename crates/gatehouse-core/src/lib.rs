//! The protocol-independent core of Gatehouse.
//!
//! - [`config`]: the TOML config and its validation; [`secret`]: secrets by reference.
//! - [`classify`]: what a command does, in protocol-independent terms.
//! - [`identity`] and [`auth`]: who is acting, from which token; [`tokens`]: the token format.
//! - [`pipeline`]: the seam every protocol adapter feeds (authorize, record, and later approve
//!   and mask).
//! - [`exec`]: one-shot commands (CLI, REST, MCP) through the same pipeline.
//! - [`grants`]: just-in-time elevation, seen by policy as `context.grants`.
//! - [`masking`]: which masking rules apply to a session.
//! - [`reviews`]: commands held for human approval, and the voting rules.
//! - [`store`] and [`recorder`]: where sessions and statements are kept, written in batches.
//! - [`tls`]: client-facing TLS material.

pub mod auth;
pub mod classify;
pub mod config;
pub mod exec;
pub mod fsutil;
pub mod grants;
pub mod identity;
pub mod masking;
pub mod pipeline;
pub mod recorder;
pub mod reviews;
pub mod secret;
pub mod store;
pub mod time;
pub mod tls;
pub mod tokens;
