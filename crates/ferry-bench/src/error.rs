//! Errors of the benchmark tool.

/// Why a benchmark could not run (a run that ran but lost messages is a [`crate::Report`]
/// whose verification failed, not an error).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The workload is inconsistent or a flag is out of range.
    #[error("invalid workload: {0}")]
    Workload(String),
    /// The workload file could not be read or parsed.
    #[error("cannot read workload file {path}: {message}")]
    WorkloadFile {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// Admin or metadata requests through the Kafka client failed.
    #[error(transparent)]
    Client(#[from] ferry_kafka::client::ClientError),
    /// A socket failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The target answered something the driver cannot use.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The run completed but lost, duplicated or reordered messages, or had errors.
    #[error("benchmark failed verification: {0}")]
    Verification(String),
    /// A driver task ended abnormally.
    #[error("benchmark task failed: {0}")]
    Task(String),
}

impl BenchError {
    /// An I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> BenchError {
        BenchError::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<ferry_storage::StorageError> for BenchError {
    /// Batches the target sent that cannot be walked.
    fn from(e: ferry_storage::StorageError) -> BenchError {
        BenchError::Protocol(format!("fetched records: {e}"))
    }
}

/// Result of the benchmark tool.
pub type Result<T, E = BenchError> = std::result::Result<T, E>;
