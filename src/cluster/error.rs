//! Why the cluster could not start, or a piece of its work failed. Each error names what it was
//! about (the stream, the bucket, the subject), since NATS's own text rarely does; what a client
//! is told about it is a [`crate::refusal::Refusal`], never this.

/// An error of the cluster layer, for the log and the operator (`machat` stops with it at
/// start, and `machat user ... --nats` prints it).
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot start the cluster runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot start the cluster thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The cluster thread ended before it answered (it panicked).
    #[error("the cluster thread stopped")]
    Stopped,
    #[error("bad --nats URL: {0}")]
    BadUrl(#[source] std::io::Error),
    /// Anything that stops the start after the URL was read, with where NATS was looked for
    /// (user, password and token hidden).
    #[error("cannot use NATS at {at}: {source}")]
    Unusable {
        at: String,
        #[source]
        source: Box<ClusterError>,
    },
    #[error("{0}")]
    Connect(#[source] async_nats::ConnectError),
    /// Creating the stream of room events, or reading its state.
    #[error("stream {stream}: {source}")]
    Stream {
        stream: &'static str,
        #[source]
        source: async_nats::Error,
    },
    /// Creating or opening a key-value bucket.
    #[error("bucket {bucket}: {source}")]
    Bucket {
        bucket: &'static str,
        #[source]
        source: async_nats::Error,
    },
    /// Reading or writing a bucket's entries.
    #[error("{bucket}: {source}")]
    Entry {
        bucket: &'static str,
        #[source]
        source: async_nats::Error,
    },
    #[error("cannot read the last event on {subject}: {source}")]
    LastEvent {
        subject: String,
        #[source]
        source: async_nats::Error,
    },
    /// Publishing to the stream, or its acknowledgement (a refused expectation among them).
    #[error("cannot publish on {subject}: {source}")]
    Publish {
        subject: String,
        #[source]
        source: async_nats::Error,
    },
    #[error("cannot encode an event: {0}")]
    Encode(#[source] serde_json::Error),
    /// `machat user add`: registering it would make two names that look alike.
    #[error("name {name} is too much like {like}, already registered")]
    LooksLike { name: String, like: String },
    /// Other nodes kept changing a bucket's entry while this one tried to write it.
    #[error("the {0} bucket's entry kept changing; gave up")]
    Contended(&'static str),
}

impl ClusterError {
    /// A bucket's entries could not be read or written.
    pub(super) fn entry(bucket: &'static str, source: impl Into<async_nats::Error>) -> Self {
        ClusterError::Entry {
            bucket,
            source: source.into(),
        }
    }

    /// The stream could not be created or asked for its state.
    pub(super) fn stream(stream: &'static str, source: impl Into<async_nats::Error>) -> Self {
        ClusterError::Stream {
            stream,
            source: source.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_names_what_it_was_about() {
        let bad = ClusterError::BadUrl(std::io::Error::other("no port"));
        let unusable = ClusterError::Unusable {
            at: "nats://***@h:4222".into(),
            source: Box::new(bad),
        };
        assert_eq!(
            unusable.to_string(),
            "cannot use NATS at nats://***@h:4222: bad --nats URL: no port"
        );
        let boom = || async_nats::Error::from("boom");
        assert_eq!(
            ClusterError::Bucket {
                bucket: "machat-presence",
                source: boom()
            }
            .to_string(),
            "bucket machat-presence: boom"
        );
        assert_eq!(
            ClusterError::entry("machat-users", boom()).to_string(),
            "machat-users: boom"
        );
        assert_eq!(
            ClusterError::stream("MACHAT", boom()).to_string(),
            "stream MACHAT: boom"
        );
        let like = ClusterError::LooksLike {
            name: "MINA".into(),
            like: "Mina".into(),
        };
        assert_eq!(
            like.to_string(),
            "name MINA is too much like Mina, already registered"
        );
    }
}
