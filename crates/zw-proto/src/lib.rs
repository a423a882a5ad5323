//! Zeitwork's shared vocabulary: the operator's API resources ([`api`]), the operator–edge
//! control protocol ([`protocol`]), the snapshot compiler that turns platform state into
//! routing configuration ([`compile`]), the reconnect schedule ([`backoff`]) and RFC 3339
//! times ([`time`]).
//!
//! Pure: no I/O, so the operator, the edges and the CLI agree on every type and the
//! compiler is tested without a database.
#![forbid(unsafe_code)]

pub mod api;
pub mod backoff;
pub mod compile;
pub mod protocol;
pub mod time;
