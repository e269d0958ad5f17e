//! Idempotent producers: producer ids and epochs, per-partition sequence tracking.
