//! Mapping of core errors to Kafka error codes: the one place where a [`CoreError`] becomes
//! a Kafka [`ResponseError`].

use ferry_core::CoreError;
use ferry_storage::StorageError;
use kafka_protocol::error::ResponseError;
use kafka_protocol::protocol::StrBytes;

/// The Kafka error for a core error on the data path (produce, fetch, offsets, admin).
pub fn response_error(error: &CoreError) -> ResponseError {
    match error {
        CoreError::UnknownTopicOrPartition => ResponseError::UnknownTopicOrPartition,
        CoreError::TopicAlreadyExists(_) => ResponseError::TopicAlreadyExists,
        CoreError::InvalidTopic(_) => ResponseError::InvalidTopicException,
        CoreError::InvalidPartitions(_) => ResponseError::InvalidPartitions,
        CoreError::InvalidReplicationFactor(_) => ResponseError::InvalidReplicationFactor,
        CoreError::InvalidConfig(_) => ResponseError::InvalidConfig,
        CoreError::MessageTooLarge(_) => ResponseError::MessageTooLarge,
        CoreError::CorruptMessage(_) => ResponseError::CorruptMessage,
        CoreError::InvalidRecord(_) => ResponseError::InvalidRecord,
        CoreError::OffsetOutOfRange => ResponseError::OffsetOutOfRange,
        CoreError::OutOfOrderSequence(_) => ResponseError::OutOfOrderSequenceNumber,
        CoreError::DuplicateSequence => ResponseError::DuplicateSequenceNumber,
        CoreError::InvalidProducerEpoch => ResponseError::InvalidProducerEpoch,
        CoreError::UnknownProducerId => ResponseError::UnknownProducerId,
        CoreError::TopicAuthorization(_) => ResponseError::TopicAuthorizationFailed,
        CoreError::PolicyViolation(_) => ResponseError::PolicyViolation,
        CoreError::InvalidGroupId => ResponseError::InvalidGroupId,
        CoreError::CoordinatorNotAvailable => ResponseError::CoordinatorNotAvailable,
        CoreError::CoordinatorLoadInProgress => ResponseError::CoordinatorLoadInProgress,
        CoreError::IllegalGeneration => ResponseError::IllegalGeneration,
        CoreError::UnknownMemberId => ResponseError::UnknownMemberId,
        CoreError::MemberIdRequired(_) => ResponseError::MemberIdRequired,
        CoreError::RebalanceInProgress => ResponseError::RebalanceInProgress,
        CoreError::InconsistentGroupProtocol => ResponseError::InconsistentGroupProtocol,
        CoreError::InvalidSessionTimeout => ResponseError::InvalidSessionTimeout,
        CoreError::GroupIdNotFound => ResponseError::GroupIdNotFound,
        CoreError::NonEmptyGroup => ResponseError::NonEmptyGroup,
        CoreError::FencedInstanceId => ResponseError::FencedInstanceId,
        CoreError::GroupMaxSizeReached => ResponseError::GroupMaxSizeReached,
        CoreError::UnstableOffsetCommit => ResponseError::UnstableOffsetCommit,
        CoreError::RequestTimedOut => ResponseError::RequestTimedOut,
        // A broker going away is "not the leader any more" to a Kafka client: it refreshes
        // its metadata and retries elsewhere (or later), which is what we want.
        CoreError::ShuttingDown => ResponseError::NotLeaderOrFollower,
        CoreError::Storage(storage) => storage_error(storage),
    }
}

/// The Kafka error for a core error on a group/coordinator request: like
/// [`response_error`], except that a shutting-down broker is "not the coordinator" (the
/// client looks the coordinator up again).
pub fn group_error(error: &CoreError) -> ResponseError {
    match error {
        CoreError::ShuttingDown | CoreError::Storage(StorageError::ShutDown) => {
            ResponseError::NotCoordinator
        }
        other => response_error(other),
    }
}

fn storage_error(error: &StorageError) -> ResponseError {
    match error {
        StorageError::CorruptBatch(_) => ResponseError::CorruptMessage,
        StorageError::BatchTooLarge { .. } => ResponseError::MessageTooLarge,
        StorageError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        StorageError::UnknownLog(_) => ResponseError::UnknownTopicOrPartition,
        StorageError::ShutDown => ResponseError::NotLeaderOrFollower,
        StorageError::InvalidLogId(_) => ResponseError::InvalidTopicException,
        // An append older than the log's leader epoch: the writer is a fenced leader.
        StorageError::StaleLeaderEpoch { .. } => ResponseError::FencedLeaderEpoch,
        // DataDirLocked only happens while opening the store, never under a request.
        StorageError::Io { .. }
        | StorageError::JournalFailed(_)
        | StorageError::DataDirLocked(_) => ResponseError::KafkaStorageError,
    }
}

/// The Kafka error code of `error`.
pub fn error_code(error: &CoreError) -> i16 {
    response_error(error).code()
}

/// The error code of a result: 0 on success.
pub fn result_code<T>(result: &Result<T, CoreError>) -> i16 {
    result.as_ref().err().map_or(0, error_code)
}

/// The human-readable message sent with error codes in APIs that carry one.
pub fn error_message(error: &CoreError) -> Option<StrBytes> {
    Some(StrBytes::from_string(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_the_kafka_protocol() {
        let cases: &[(CoreError, i16)] = &[
            (CoreError::UnknownTopicOrPartition, 3),
            (CoreError::MessageTooLarge(String::new()), 10),
            (CoreError::CorruptMessage(String::new()), 2),
            (CoreError::InvalidTopic(String::new()), 17),
            (CoreError::InvalidPartitions(String::new()), 37),
            (CoreError::InvalidReplicationFactor(String::new()), 38),
            (CoreError::InvalidConfig(String::new()), 40),
            (CoreError::OutOfOrderSequence(String::new()), 45),
            (CoreError::DuplicateSequence, 46),
            (CoreError::InvalidProducerEpoch, 47),
            (CoreError::UnknownProducerId, 59),
            (CoreError::MemberIdRequired(String::new()), 79),
            (CoreError::TopicAlreadyExists(String::new()), 36),
            (CoreError::RebalanceInProgress, 27),
            (CoreError::OffsetOutOfRange, 1),
        ];
        for (error, code) in cases {
            assert_eq!(error_code(error), *code, "{error:?}");
        }
        assert_eq!(group_error(&CoreError::ShuttingDown).code(), 16);
        assert_eq!(error_code(&CoreError::ShuttingDown), 6);
        assert_eq!(result_code::<()>(&Ok(())), 0);
    }
}
