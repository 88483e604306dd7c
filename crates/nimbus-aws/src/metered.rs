//! Counting the S3 port's traffic into the node's [`StorageMeter`]: every routed operation by
//! name and billing class ([`Counting`], s3s's access hook, which sees each operation once,
//! after its signature checked out), every error response by code ([`error_code`], read from
//! the XML body s3s wrote), and object bytes in and out as they stream ([`CountedStream`], in
//! `s3.rs`).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use nimbus_core::meter::{OpClass, StorageKind, StorageMeter};
use s3s::access::{S3Access, S3AccessContext};
use s3s::path::S3Path;
use s3s::{s3_error, S3Result};

/// S3 operations by name, with how S3 bills them (deletes are counted but free). The names
/// are a fixed set, so `/metrics` labels stay bounded; anything else counts as "Other".
const OPERATIONS: &[(&str, OpClass)] = &[
    ("AbortMultipartUpload", OpClass::Delete),
    ("CompleteMultipartUpload", OpClass::Write),
    ("CopyObject", OpClass::Write),
    ("CreateBucket", OpClass::Write),
    ("CreateMultipartUpload", OpClass::Write),
    ("DeleteBucket", OpClass::Delete),
    ("DeleteObject", OpClass::Delete),
    ("DeleteObjects", OpClass::Delete),
    ("GetBucketLocation", OpClass::Read),
    ("GetObject", OpClass::Read),
    ("HeadBucket", OpClass::Read),
    ("HeadObject", OpClass::Read),
    ("ListBuckets", OpClass::List),
    ("ListMultipartUploads", OpClass::List),
    ("ListObjects", OpClass::List),
    ("ListObjectsV2", OpClass::List),
    ("ListParts", OpClass::List),
    ("PutObject", OpClass::Write),
    ("UploadPart", OpClass::Write),
    ("UploadPartCopy", OpClass::Write),
];

/// The operation's label and billing class.
pub fn classify(name: &str) -> (&'static str, OpClass) {
    OPERATIONS.iter().find(|(n, _)| *n == name).map_or(("Other", OpClass::Read), |(n, c)| (*n, *c))
}

/// s3s's access hook: refuses unsigned requests (what s3s does without a hook) and counts the
/// rest. What each key may touch is checked later, in `s3.rs`.
pub struct Counting(pub Arc<StorageMeter>);

#[async_trait::async_trait]
impl S3Access for Counting {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let (operation, class) = classify(cx.s3_op().name());
        self.0.s3_operation(operation);
        if cx.credentials().is_none() {
            return Err(s3_error!(AccessDenied, "the request is not signed; sign it with a nimbus access key"));
        }
        let bucket = match cx.s3_path() {
            S3Path::Bucket { bucket } | S3Path::Object { bucket, .. } => Some(bucket),
            S3Path::Root => None,
        };
        if let Some(bucket) = bucket {
            self.0.request(StorageKind::Bucket, bucket, class);
        }
        Ok(())
    }
}

/// The `<Code>` of an S3 error body.
pub fn error_code(body: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("<Code>")? + "<Code>".len();
    let len = text.get(start..)?.find("</Code>")?;
    text.get(start..start + len).filter(|c| !c.is_empty() && c.len() <= 64)
}

/// Which way object bytes flow.
#[derive(Clone, Copy)]
pub enum Direction {
    In,
    Out,
}

/// A byte stream that counts what passes through it into the meter, as it passes.
pub struct CountedStream<S> {
    inner: S,
    meter: Arc<StorageMeter>,
    bucket: String,
    direction: Direction,
}

impl<S> CountedStream<S> {
    pub fn new(inner: S, meter: Arc<StorageMeter>, bucket: &str, direction: Direction) -> Self {
        CountedStream { inner, meter, bucket: bucket.to_owned(), direction }
    }
}

impl<S, E> Stream for CountedStream<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    type Item = Result<Bytes, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_next(cx);
        if let Poll::Ready(Some(Ok(b))) = &polled {
            let n = b.len() as u64;
            let (i, o) = match this.direction {
                Direction::In => (n, 0),
                Direction::Out => (0, n),
            };
            this.meter.bytes(StorageKind::Bucket, &this.bucket, i, o);
        }
        polled
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn operations_are_classed_as_s3_bills_them() {
        assert_eq!(classify("PutObject"), ("PutObject", OpClass::Write));
        assert_eq!(classify("GetObject"), ("GetObject", OpClass::Read));
        assert_eq!(classify("ListObjectsV2"), ("ListObjectsV2", OpClass::List));
        assert_eq!(classify("DeleteObject"), ("DeleteObject", OpClass::Delete));
        assert_eq!(classify("GetBucketAcl").0, "Other");
        let mut names: Vec<_> = OPERATIONS.iter().map(|o| o.0).collect();
        names.sort_unstable();
        assert_eq!(names, OPERATIONS.iter().map(|o| o.0).collect::<Vec<_>>(), "kept sorted");
    }

    #[test]
    fn error_codes_come_from_the_xml_body() {
        let body = b"<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code><Message>m</Message></Error>";
        assert_eq!(error_code(body), Some("NoSuchKey"));
        assert_eq!(error_code(b"<Error></Error>"), None);
        assert_eq!(error_code(b"\xff"), None);
    }

    #[tokio::test]
    async fn streams_count_bytes_as_they_pass() {
        use futures_util::StreamExt as _;
        let meter = Arc::new(StorageMeter::default());
        let chunks = futures_util::stream::iter(vec![
            Ok::<_, std::io::Error>(Bytes::from_static(b"abc")),
            Ok(Bytes::from_static(b"de")),
        ]);
        let mut s = CountedStream::new(chunks, meter.clone(), "b", Direction::In);
        while s.next().await.is_some() {}
        assert_eq!(meter.take()[0].2.bytes_in, 5);
        assert_eq!(meter.s3_totals().bytes_in, 5);
    }
}
