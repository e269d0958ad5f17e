//! Ferry's Kafka wire-protocol adapter.
//!
//! [`server`] accepts Kafka connections, decodes requests with the `kafka-protocol`
//! crate, translates each into calls on [`ferry_core::Broker`] and encodes the answers;
//! it holds no business rule of its own. [`errors`] maps core errors to Kafka error codes
//! in one place. [`client`] is a small Kafka client used by Ferry's command-line tools.

pub mod client;
pub mod compression;
pub mod errors;
pub mod server;
