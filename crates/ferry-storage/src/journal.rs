//! The group-commit journal that makes `flush=sync` appends durable with one fsync for
//! many producers and partitions.
