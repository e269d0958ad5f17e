//! Mapping of core errors to Kafka error codes.
