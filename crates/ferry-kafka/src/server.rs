//! The Kafka listener: connections, framing, dispatch.
