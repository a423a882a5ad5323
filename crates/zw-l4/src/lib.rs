//! Zeitwork's L4 balancer (DESIGN.md, "L4 balancer"). So far: [`client_hello`], which reads
//! the server name and ALPN protocols from a TLS ClientHello without terminating TLS.
#![forbid(unsafe_code)]

pub mod client_hello;
