//! Bytes in and out: the network trait, each connection's reader and writer with its read
//! credit, the acceptor and where its TLS handshakes run, peer name resolution, dialing, descriptor headroom, TLS, and the
//! messages these tasks send the driver.

pub(crate) mod accept;
pub(crate) mod conn;
pub(crate) mod credit;
pub(crate) mod dial;
pub mod fd;
pub(crate) mod frames;
pub(crate) mod handshakes;
pub(crate) mod messages;
pub mod net;
pub(crate) mod resolve;
pub(crate) mod slots;
pub mod tls;
