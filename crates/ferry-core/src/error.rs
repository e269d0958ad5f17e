/// Errors the core reports to protocol adapters. Each adapter maps these to its own
/// protocol's codes in one place.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("unknown topic or partition")]
    UnknownTopicOrPartition,
    #[error("topic already exists: {0}")]
    TopicAlreadyExists(String),
    #[error("invalid topic name: {0}")]
    InvalidTopic(String),
    #[error("invalid partition count: {0}")]
    InvalidPartitions(String),
    #[error("invalid replication factor: {0}")]
    InvalidReplicationFactor(String),
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    #[error("message too large: {0}")]
    MessageTooLarge(String),
    #[error("corrupt message: {0}")]
    CorruptMessage(String),
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    #[error("offset out of range")]
    OffsetOutOfRange,
    #[error("out of order sequence number: {0}")]
    OutOfOrderSequence(String),
    #[error("duplicate sequence number")]
    DuplicateSequence,
    #[error("invalid producer epoch")]
    InvalidProducerEpoch,
    #[error("unknown producer id")]
    UnknownProducerId,
    #[error("topic authorization / internal topic: {0}")]
    TopicAuthorization(String),
    #[error("policy violation: {0}")]
    PolicyViolation(String),
    // group errors
    #[error("invalid group id")]
    InvalidGroupId,
    #[error("coordinator not available")]
    CoordinatorNotAvailable,
    #[error("coordinator load in progress")]
    CoordinatorLoadInProgress,
    #[error("illegal generation")]
    IllegalGeneration,
    #[error("unknown member id")]
    UnknownMemberId,
    #[error("member id required")]
    MemberIdRequired(String),
    #[error("rebalance in progress")]
    RebalanceInProgress,
    #[error("inconsistent group protocol")]
    InconsistentGroupProtocol,
    #[error("invalid session timeout")]
    InvalidSessionTimeout,
    #[error("group id not found")]
    GroupIdNotFound,
    #[error("non-empty group")]
    NonEmptyGroup,
    #[error("fenced instance id")]
    FencedInstanceId,
    #[error("group max size reached")]
    GroupMaxSizeReached,
    #[error("unstable offset commit")]
    UnstableOffsetCommit,
    #[error("request timed out")]
    RequestTimedOut,
    #[error("broker is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Storage(#[from] ferry_storage::StorageError),
}
