//! Business errors on the wire: RocketMQ v2 answers them in-band as `Status{code, message}`
//! with gRPC OK (the official clients expect that), choosing only codes the calling client's
//! version knows.

use raftmq_proto::rocketmq::v2::{self as v2, Code};
use raftmq_raft::ProposeError;
use raftmq_storage::StorageError;

/// A request refused with a RocketMQ code and a message for the user.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub code: Code,
    pub message: String,
}

impl Rejection {
    pub fn new(code: Code, message: impl Into<String>) -> Rejection {
        Rejection {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Rejection {
        Rejection::new(Code::BadRequest, message)
    }

    pub fn internal(message: impl Into<String>) -> Rejection {
        Rejection::new(Code::InternalServerError, message)
    }
}

impl From<ProposeError> for Rejection {
    fn from(err: ProposeError) -> Rejection {
        let code = match &err {
            ProposeError::NoLeader => Code::HaNotAvailable,
            // RocketMQ's answer for "the write may not be durable": clients retry, and retrying a
            // send with the same message id is deduplicated.
            ProposeError::Unknown(_) => Code::MasterPersistenceTimeout,
            ProposeError::Fatal(_) => Code::InternalServerError,
            // RocketMQ answers storage pressure with "broker busy" (TOO_MANY_REQUESTS on the
            // v2 wire): clients back off instead of retrying at once.
            ProposeError::NoRoom(_) => Code::TooManyRequests,
        };
        Rejection::new(code, err.to_string())
    }
}

impl From<StorageError> for Rejection {
    fn from(err: StorageError) -> Rejection {
        tracing::error!(error = %err, "storage read failed");
        Rejection::internal(format!("storage error: {err}"))
    }
}

/// What the caller's client library understands, from its request headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientKind {
    /// The Rust client 5.0.0 panics on `Code` values it does not know.
    Rust,
    Python,
    #[default]
    Other,
}

impl ClientKind {
    pub fn of<T>(request: &tonic::Request<T>) -> ClientKind {
        match request
            .metadata()
            .get("x-mq-language")
            .and_then(|v| v.to_str().ok())
        {
            Some("RUST") => ClientKind::Rust,
            Some("PYTHON") => ClientKind::Python,
            _ => ClientKind::Other,
        }
    }

    /// Replace codes this client does not know by the closest one it does.
    pub fn code(self, code: Code) -> Code {
        match (self, code) {
            (
                ClientKind::Rust,
                Code::MessageBodyEmpty | Code::IllegalOffset | Code::IllegalLiteTopic,
            ) => Code::BadRequest,
            (ClientKind::Rust, Code::OffsetNotFound) => Code::NotFound,
            (
                ClientKind::Rust,
                Code::LiteTopicQuotaExceeded | Code::LiteSubscriptionQuotaExceeded,
            ) => Code::TooManyRequests,
            (ClientKind::Rust | ClientKind::Python, Code::InvalidClientProperties) => {
                Code::BadRequest
            }
            (_, code) => code,
        }
    }

    pub fn status(self, rejection: &Rejection) -> v2::Status {
        v2::Status {
            code: self.code(rejection.code) as i32,
            message: rejection.message.clone(),
        }
    }
}

pub fn ok() -> v2::Status {
    v2::Status {
        code: Code::Ok as i32,
        message: "OK".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_clients_never_get_codes_they_cannot_decode() {
        assert_eq!(
            Code::BadRequest,
            ClientKind::Rust.code(Code::MessageBodyEmpty)
        );
        assert_eq!(Code::NotFound, ClientKind::Rust.code(Code::OffsetNotFound));
        assert_eq!(
            Code::MessageBodyEmpty,
            ClientKind::Python.code(Code::MessageBodyEmpty)
        );
        assert_eq!(
            Code::MessageBodyEmpty,
            ClientKind::Other.code(Code::MessageBodyEmpty)
        );
    }

    #[test]
    fn propose_errors_map_to_retryable_codes() {
        assert_eq!(
            Code::HaNotAvailable,
            Rejection::from(ProposeError::NoLeader).code
        );
        assert_eq!(
            Code::MasterPersistenceTimeout,
            Rejection::from(ProposeError::Unknown("leader died".into())).code
        );
    }
}
