//! A partition: a log, its producer state and the wake-up for waiting fetches.
