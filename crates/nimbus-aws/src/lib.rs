//! The AWS-compatible port (`nimbus up --aws-listen`, default `127.0.0.1:4566`): S3 over the
//! [`nimbus_core::ObjectStore`] seam, SQS (JSON and query protocols, [`sqs`]) over the
//! [`nimbus_core::messages::MessageQueues`] seam, and the Lambda Invoke API again, so `AWS_ENDPOINT_URL`
//! alone points every SDK client at nimbus, as LocalStack and fakecloud do.
//!
//! The S3 protocol (routing, XML bodies and errors, SigV4 in header and presigned forms,
//! `aws-chunked` streaming bodies with their chunk signatures and trailers) is the `s3s` crate's:
//! hand-writing it would re-derive years of SDK quirks. This crate supplies the operations
//! ([`s3::S3Api`]), the keys and what each may touch ([`keys`]), the listener ([`server`]) and
//! the same service for function instances, with a key per instance ([`instances`]).

pub mod credentials;
pub mod instances;
pub mod keys;
pub mod metered;
pub mod s3;
pub mod server;
pub mod sigv4;
pub mod sqs;

pub use keys::{KeyRing, Principal};
pub use s3::S3Api;
