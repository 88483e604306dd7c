//! The S3 operations, as `s3s::S3` over `Arc<dyn ObjectStore>`: each maps its input onto the
//! store and the store's answer (or [`ObjectError`]) onto S3's output and error codes. What a
//! key may touch is checked here, before the store is asked ([`KeyRing::check`]).

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use futures_util::StreamExt as _;
use nimbus_core::meter::StorageMeter;
use nimbus_core::objects::{
    ByteRange, ByteStream, ChecksumAlgorithm as Alg, Expected, ListQuery, ObjectError, ObjectHeaders, ObjectMeta,
    ObjectStore, PutOptions,
};
use nimbus_core::Op;
use s3s::dto::*;
use s3s::{s3_error, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, S3};

use crate::keys::KeyRing;
use crate::metered::{CountedStream, Direction};

/// The S3 service over an object store.
pub struct S3Api {
    store: Arc<dyn ObjectStore>,
    keys: KeyRing,
    meter: Arc<StorageMeter>,
}

impl S3Api {
    pub fn new(store: Arc<dyn ObjectStore>, keys: KeyRing) -> Self {
        S3Api { store, keys, meter: Arc::default() }
    }

    /// Count object bytes in and out into `meter` (see [`crate::metered`]).
    pub fn with_meter(self, meter: Arc<StorageMeter>) -> Self {
        S3Api { meter, ..self }
    }

    /// The object bytes of a request body, counted in as they arrive.
    fn body_in(&self, bucket: &str, blob: StreamingBlob) -> ByteStream {
        Box::pin(CountedStream::new(body_stream(blob), self.meter.clone(), bucket, Direction::In))
    }

    /// Refuse what the request's key may not do (`op` `None`: admin only).
    fn allow<T>(&self, req: &S3Request<T>, bucket: Option<&str>, op: Option<Op>, operation: &str) -> S3Result<()> {
        let Some(creds) = &req.credentials else {
            return Err(s3_error!(AccessDenied, "the request is not signed; sign it with a nimbus access key"));
        };
        self.keys.check(&creds.access_key, bucket, op, operation)
    }
}

/// S3's error for a store error.
fn s3_err(e: ObjectError) -> S3Error {
    let code = match &e {
        ObjectError::NoSuchBucket(_) => S3ErrorCode::NoSuchBucket,
        ObjectError::BucketExists(_) => S3ErrorCode::BucketAlreadyOwnedByYou,
        ObjectError::BucketNotEmpty(_) => S3ErrorCode::BucketNotEmpty,
        ObjectError::NoSuchKey(..) => S3ErrorCode::NoSuchKey,
        ObjectError::KeyTooLong(_) => S3ErrorCode::KeyTooLongError,
        ObjectError::NoSuchUpload(_) => S3ErrorCode::NoSuchUpload,
        ObjectError::InvalidPart(_) => S3ErrorCode::InvalidPart,
        ObjectError::InvalidPartOrder => S3ErrorCode::InvalidPartOrder,
        ObjectError::EntityTooSmall(..) => S3ErrorCode::EntityTooSmall,
        ObjectError::InvalidPartNumber(_) => S3ErrorCode::InvalidArgument,
        ObjectError::InvalidRange(_) => S3ErrorCode::InvalidRange,
        ObjectError::BadDigest(_) => S3ErrorCode::BadDigest,
        ObjectError::IncompleteBody { .. } | ObjectError::Body(_) => S3ErrorCode::IncompleteBody,
        ObjectError::Backend { .. } => {
            tracing::error!(error = %e, "object store failed");
            S3ErrorCode::InternalError
        }
    };
    S3Error::with_message(code, e.to_string())
}

fn ts(ms: u64) -> Timestamp {
    Timestamp::from(UNIX_EPOCH + Duration::from_millis(ms))
}

fn ts_secs(t: &Timestamp) -> i64 {
    time::OffsetDateTime::from(t.clone()).unix_timestamp()
}

fn quoted(etag: &str) -> ETag {
    ETag::Strong(etag.to_owned())
}

fn i64_of(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn body_stream(blob: StreamingBlob) -> ByteStream {
    Box::pin(blob.map(|r| r.map_err(std::io::Error::other)))
}

/// [`checksum_request`] of a PutObject or UploadPart request: s3s gives the two inputs distinct
/// types whose checksum fields are named alike.
macro_rules! requested_checksum {
    ($req:expr) => {
        checksum_request(
            $req.input.checksum_algorithm.as_ref(),
            [
                (Alg::Crc32, $req.input.checksum_crc32.as_ref()),
                (Alg::Crc32c, $req.input.checksum_crc32c.as_ref()),
                (Alg::Sha256, $req.input.checksum_sha256.as_ref()),
            ],
            &$req.headers,
            $req.trailing_headers.clone(),
        )
    };
}

/// The checksum the client asked for: a value in a header, or an algorithm whose value comes
/// in the `aws-chunked` trailer.
fn checksum_request(
    algorithm: Option<&ChecksumAlgorithm>,
    values: [(Alg, Option<&String>); 3],
    req_headers: &http::HeaderMap,
    trailers: Option<s3s::TrailingHeaders>,
) -> Option<(Alg, Option<Expected>)> {
    if let Some((alg, v)) = values.iter().find_map(|(a, v)| v.map(|v| (*a, v.clone()))) {
        return Some((alg, Some(Expected::Value(v))));
    }
    let trailer = req_headers.get("x-amz-trailer").and_then(|v| v.to_str().ok()).map(str::to_ascii_lowercase);
    let from_trailer = trailer.as_deref().and_then(|t| t.strip_prefix("x-amz-checksum-")).and_then(Alg::parse);
    let alg = from_trailer.or_else(|| algorithm.and_then(|a| Alg::parse(a.as_str())))?;
    let expected = match (trailer, trailers) {
        (Some(name), Some(t)) if from_trailer.is_some() => Some(Expected::AfterBody(Arc::new(move || {
            t.read(|h| h.get(&name).and_then(|v| v.to_str().ok().map(String::from))).flatten()
        }))),
        _ => None,
    };
    Some((alg, expected))
}

fn checksum_fields(meta_checksum: Option<&nimbus_core::objects::Checksum>) -> [Option<String>; 3] {
    let mut out = [None, None, None];
    if let Some(c) = meta_checksum {
        let slot = match c.algorithm {
            Alg::Crc32 => out.get_mut(0),
            Alg::Crc32c => out.get_mut(1),
            Alg::Sha256 => out.get_mut(2),
        };
        if let Some(s) = slot {
            *s = Some(c.value.clone());
        }
    }
    out
}

struct HeaderInput {
    content_type: Option<String>,
    content_encoding: Option<String>,
    content_disposition: Option<String>,
    content_language: Option<String>,
    cache_control: Option<String>,
    metadata: Option<Metadata>,
}

fn object_headers(h: HeaderInput) -> ObjectHeaders {
    // `aws-chunked` is how the body was sent, not how the object is encoded: S3 drops it.
    let content_encoding = h.content_encoding.map(|e| {
        e.split(',').map(str::trim).filter(|t| !t.eq_ignore_ascii_case("aws-chunked")).collect::<Vec<_>>().join(",")
    });
    ObjectHeaders {
        content_type: h.content_type,
        content_encoding: content_encoding.filter(|e| !e.is_empty()),
        content_disposition: h.content_disposition,
        content_language: h.content_language,
        cache_control: h.cache_control,
        expires: None,
        metadata: h
            .metadata
            .map(|m| m.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect())
            .unwrap_or_default(),
    }
}

fn metadata_out(h: &ObjectHeaders) -> Option<Metadata> {
    (!h.metadata.is_empty()).then(|| h.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// Conditional GET/HEAD (RFC 9110 order: If-Match, If-Unmodified-Since, If-None-Match,
/// If-Modified-Since).
fn check_conditions(
    meta: &ObjectMeta,
    if_match: Option<&ETagCondition>,
    if_unmodified_since: Option<&Timestamp>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
) -> S3Result<()> {
    let etag = quoted(&meta.etag);
    let modified_secs = i64::try_from(meta.last_modified_ms / 1000).unwrap_or(i64::MAX);
    let matches = |c: &ETagCondition| match c {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => e.value() == etag.value(),
    };
    if let Some(c) = if_match {
        if !matches(c) {
            return Err(s3_error!(PreconditionFailed, "If-Match: the ETag is {}", meta.etag));
        }
    } else if if_unmodified_since.is_some_and(|t| modified_secs > ts_secs(t)) {
        return Err(s3_error!(PreconditionFailed, "the object was modified since If-Unmodified-Since"));
    }
    if let Some(c) = if_none_match {
        if matches(c) {
            return Err(S3Error::new(S3ErrorCode::NotModified));
        }
    } else if if_modified_since.is_some_and(|t| modified_secs <= ts_secs(t)) {
        return Err(S3Error::new(S3ErrorCode::NotModified));
    }
    Ok(())
}

fn range_of(r: &Range) -> ByteRange {
    match r {
        Range::Int { first, last } => ByteRange::From(*first, *last),
        Range::Suffix { length } => ByteRange::Suffix(*length),
    }
}

/// S3's `encoding-type=url`: keys percent-encoded, `/` kept.
fn encode_key(key: &str, url: bool) -> String {
    const SET: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~').remove(b'/');
    if url {
        percent_encoding::utf8_percent_encode(key, SET).to_string()
    } else {
        key.to_owned()
    }
}

fn object_entry(m: ObjectMeta, url: bool) -> Object {
    Object {
        key: Some(encode_key(&m.key, url)),
        size: Some(i64_of(m.size)),
        e_tag: Some(quoted(&m.etag)),
        last_modified: Some(ts(m.last_modified_ms)),
        storage_class: Some(ObjectStorageClass::from_static(ObjectStorageClass::STANDARD)),
        ..Default::default()
    }
}

#[async_trait::async_trait]
impl S3 for S3Api {
    async fn create_bucket(&self, req: S3Request<CreateBucketInput>) -> S3Result<S3Response<CreateBucketOutput>> {
        self.allow(&req, Some(&req.input.bucket), None, "CreateBucket")?;
        let bucket = req.input.bucket;
        if !self.store.create_bucket(&bucket).await.map_err(s3_err)? {
            return Err(s3_err(ObjectError::BucketExists(bucket)));
        }
        Ok(S3Response::new(CreateBucketOutput { location: Some(format!("/{bucket}")) }))
    }

    async fn delete_bucket(&self, req: S3Request<DeleteBucketInput>) -> S3Result<S3Response<DeleteBucketOutput>> {
        self.allow(&req, Some(&req.input.bucket), None, "DeleteBucket")?;
        if !self.store.delete_bucket(&req.input.bucket, false).await.map_err(s3_err)? {
            return Err(s3_err(ObjectError::NoSuchBucket(req.input.bucket)));
        }
        Ok(S3Response::new(DeleteBucketOutput {}))
    }

    async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> S3Result<S3Response<HeadBucketOutput>> {
        self.allow(&req, Some(&req.input.bucket), Some(Op::Read), "HeadBucket")?;
        match self.store.head_bucket(&req.input.bucket).await.map_err(s3_err)? {
            Some(_) => Ok(S3Response::new(HeadBucketOutput::default())),
            None => Err(s3_err(ObjectError::NoSuchBucket(req.input.bucket))),
        }
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.allow(&req, Some(&req.input.bucket), Some(Op::Read), "GetBucketLocation")?;
        match self.store.head_bucket(&req.input.bucket).await.map_err(s3_err)? {
            Some(_) => Ok(S3Response::new(GetBucketLocationOutput::default())),
            None => Err(s3_err(ObjectError::NoSuchBucket(req.input.bucket))),
        }
    }

    async fn list_buckets(&self, req: S3Request<ListBucketsInput>) -> S3Result<S3Response<ListBucketsOutput>> {
        self.allow(&req, None, Some(Op::Read), "ListBuckets")?;
        let principal = req.credentials.as_ref().and_then(|c| self.keys.principal(&c.access_key));
        let buckets = self.store.list_buckets().await.map_err(s3_err)?;
        let buckets = buckets
            .into_iter()
            .filter(|b| principal.as_ref().is_some_and(|p| p.sees(&b.name)))
            .map(|b| Bucket { name: Some(b.name), creation_date: Some(ts(b.created_ms)), bucket_region: None })
            .collect();
        Ok(S3Response::new(ListBucketsOutput { buckets: Some(buckets), ..Default::default() }))
    }

    async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        self.allow(&req, Some(&req.input.bucket), Some(Op::Write), "PutObject")?;
        let checksum = requested_checksum!(req);
        let input = req.input;
        self.put_preconditions(&input.bucket, &input.key, input.if_match.as_ref(), input.if_none_match.as_ref())
            .await?;
        let body = input.body.ok_or_else(|| s3_error!(IncompleteBody, "a PUT needs a body"))?;
        let opts = PutOptions {
            headers: object_headers(HeaderInput {
                content_type: input.content_type,
                content_encoding: input.content_encoding,
                content_disposition: input.content_disposition,
                content_language: input.content_language,
                cache_control: input.cache_control,
                metadata: input.metadata,
            }),
            content_length: input.content_length.and_then(|n| u64::try_from(n).ok()),
            content_md5: input.content_md5,
            checksum,
        };
        let body = self.body_in(&input.bucket, body);
        let meta = self.store.put_object(&input.bucket, &input.key, body, opts).await.map_err(s3_err)?;
        let [crc32, crc32c, sha256] = checksum_fields(meta.checksum.as_ref());
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(quoted(&meta.etag)),
            checksum_crc32: crc32,
            checksum_crc32c: crc32c,
            checksum_sha256: sha256,
            ..Default::default()
        }))
    }

    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        self.allow(&req, Some(&req.input.bucket), Some(Op::Read), "GetObject")?;
        let i = &req.input;
        let range = i.range.as_ref().map(range_of);
        let got = self.store.get_object(&i.bucket, &i.key, range).await.map_err(s3_err)?;
        let m = &got.meta;
        check_conditions(
            m,
            i.if_match.as_ref(),
            i.if_unmodified_since.as_ref(),
            i.if_none_match.as_ref(),
            i.if_modified_since.as_ref(),
        )?;
        let whole = got.start == 0 && got.end == m.size;
        let [crc32, crc32c, sha256] = if whole { checksum_fields(m.checksum.as_ref()) } else { [None, None, None] };
        let content_range = range.map(|_| format!("bytes {}-{}/{}", got.start, got.end.saturating_sub(1), m.size));
        let output = GetObjectOutput {
            content_length: Some(i64_of(got.end - got.start)),
            content_range,
            accept_ranges: Some("bytes".into()),
            e_tag: Some(quoted(&m.etag)),
            last_modified: Some(ts(m.last_modified_ms)),
            content_type: m.headers.content_type.clone(),
            content_encoding: m.headers.content_encoding.clone(),
            content_disposition: m.headers.content_disposition.clone(),
            content_language: m.headers.content_language.clone(),
            cache_control: m.headers.cache_control.clone(),
            metadata: metadata_out(&m.headers),
            parts_count: m.parts.and_then(|p| i32::try_from(p).ok()),
            checksum_crc32: crc32,
            checksum_crc32c: crc32c,
            checksum_sha256: sha256,
            body: Some(StreamingBlob::wrap(CountedStream::new(
                got.body,
                self.meter.clone(),
                &i.bucket,
                Direction::Out,
            ))),
            ..Default::default()
        };
        Ok(S3Response::new(output))
    }

    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        self.allow(&req, Some(&req.input.bucket), Some(Op::Read), "HeadObject")?;
        let i = &req.input;
        let m = self.store.head_object(&i.bucket, &i.key).await.map_err(s3_err)?;
        check_conditions(
            &m,
            i.if_match.as_ref(),
            i.if_unmodified_since.as_ref(),
            i.if_none_match.as_ref(),
            i.if_modified_since.as_ref(),
        )?;
        let [crc32, crc32c, sha256] = checksum_fields(m.checksum.as_ref());
        Ok(S3Response::new(HeadObjectOutput {
            content_length: Some(i64_of(m.size)),
            accept_ranges: Some("bytes".into()),
            e_tag: Some(quoted(&m.etag)),
            last_modified: Some(ts(m.last_modified_ms)),
            content_type: m.headers.content_type.clone(),
            content_encoding: m.headers.content_encoding.clone(),
            content_disposition: m.headers.content_disposition.clone(),
            content_language: m.headers.content_language.clone(),
            cache_control: m.headers.cache_control.clone(),
            metadata: metadata_out(&m.headers),
            parts_count: m.parts.and_then(|p| i32::try_from(p).ok()),
            checksum_crc32: crc32,
            checksum_crc32c: crc32c,
            checksum_sha256: sha256,
            ..Default::default()
        }))
    }

    async fn delete_object(&self, req: S3Request<DeleteObjectInput>) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.allow(&req, Some(&req.input.bucket), Some(Op::Write), "DeleteObject")?;
        self.store.delete_object(&req.input.bucket, &req.input.key).await.map_err(s3_err)?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(&self, req: S3Request<DeleteObjectsInput>) -> S3Result<S3Response<DeleteObjectsOutput>> {
        self.allow(&req, Some(&req.input.bucket), Some(Op::Write), "DeleteObjects")?;
        let quiet = req.input.delete.quiet.unwrap_or(false);
        let keys: Vec<String> = req.input.delete.objects.into_iter().map(|o| o.key).collect();
        let results = self.store.delete_objects(&req.input.bucket, &keys).await;
        let (mut deleted, mut errors) = (Vec::new(), Vec::new());
        for (key, r) in keys.into_iter().zip(results) {
            match r {
                Ok(_) if quiet => {}
                Ok(_) => deleted.push(DeletedObject { key: Some(key), ..Default::default() }),
                Err(e) => {
                    let e = s3_err(e);
                    errors.push(Error {
                        key: Some(key),
                        code: Some(e.code().as_str().to_owned()),
                        message: e.message().map(str::to_owned),
                        version_id: None,
                    });
                }
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput { deleted: Some(deleted), errors: Some(errors), ..Default::default() }))
    }

    async fn copy_object(&self, req: S3Request<CopyObjectInput>) -> S3Result<S3Response<CopyObjectOutput>> {
        let (src_bucket, src_key) = match &req.input.copy_source {
            CopySource::Bucket { bucket, key, .. } => (bucket.to_string(), key.to_string()),
            CopySource::AccessPoint { .. } | CopySource::Outpost { .. } => {
                return Err(s3_error!(NotImplemented, "copy sources are BUCKET/KEY; access points are not supported"))
            }
        };
        self.allow(&req, Some(&src_bucket), Some(Op::Read), "CopyObject (source)")?;
        self.allow(&req, Some(&req.input.bucket), Some(Op::Write), "CopyObject")?;
        let input = req.input;
        let replace = input.metadata_directive.as_ref().is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        let headers = replace.then(|| {
            object_headers(HeaderInput {
                content_type: input.content_type,
                content_encoding: input.content_encoding,
                content_disposition: input.content_disposition,
                content_language: input.content_language,
                cache_control: input.cache_control,
                metadata: input.metadata,
            })
        });
        let m =
            self.store.copy_object(&src_bucket, &src_key, &input.bucket, &input.key, headers).await.map_err(s3_err)?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(quoted(&m.etag)),
                last_modified: Some(ts(m.last_modified_ms)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn list_objects_v2(&self, req: S3Request<ListObjectsV2Input>) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.allow(&req, Some(&req.input.bucket), Some(Op::Read), "ListObjectsV2")?;
        let i = req.input;
        let url = i.encoding_type.as_ref().is_some_and(|e| e.as_str() == EncodingType::URL);
        let after = match (i.continuation_token.clone(), i.start_after.clone()) {
            (Some(ct), Some(sa)) => Some(ct.max(sa)),
            (ct, sa) => ct.or(sa),
        };
        let max_keys = i.max_keys.unwrap_or(1000);
        let query = ListQuery {
            prefix: i.prefix.clone().unwrap_or_default(),
            delimiter: i.delimiter.clone().filter(|d| !d.is_empty()),
            after,
            max_keys: usize::try_from(max_keys).unwrap_or(0),
        };
        let page = if max_keys <= 0 {
            nimbus_core::objects::ListPage::default()
        } else {
            self.store.list_objects(&i.bucket, &query).await.map_err(s3_err)?
        };
        let key_count = i32::try_from(page.objects.len() + page.common_prefixes.len()).unwrap_or(i32::MAX);
        let prefixes: Vec<CommonPrefix> =
            page.common_prefixes.into_iter().map(|p| CommonPrefix { prefix: Some(encode_key(&p, url)) }).collect();
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(i.bucket),
            prefix: i.prefix,
            delimiter: i.delimiter,
            max_keys: Some(max_keys),
            key_count: Some(key_count),
            is_truncated: Some(page.next.is_some()),
            continuation_token: i.continuation_token,
            next_continuation_token: page.next,
            start_after: i.start_after,
            encoding_type: i.encoding_type,
            contents: Some(page.objects.into_iter().map(|m| object_entry(m, url)).collect()),
            common_prefixes: (!prefixes.is_empty()).then_some(prefixes),
            ..Default::default()
        }))
    }

    async fn list_objects(&self, req: S3Request<ListObjectsInput>) -> S3Result<S3Response<ListObjectsOutput>> {
        let marker = req.input.marker.clone();
        let v2 = req.map_input(|i| ListObjectsV2Input {
            bucket: i.bucket,
            delimiter: i.delimiter,
            encoding_type: i.encoding_type,
            max_keys: i.max_keys,
            prefix: i.prefix,
            start_after: i.marker,
            ..Default::default()
        });
        let out = self.list_objects_v2(v2).await?;
        Ok(out.map_output(|v2| ListObjectsOutput {
            name: v2.name,
            prefix: v2.prefix,
            delimiter: v2.delimiter,
            max_keys: v2.max_keys,
            is_truncated: v2.is_truncated,
            marker,
            next_marker: v2.next_continuation_token,
            encoding_type: v2.encoding_type,
            contents: v2.contents,
            common_prefixes: v2.common_prefixes,
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.allow(&req, Some(&req.input.bucket), Some(Op::Write), "CreateMultipartUpload")?;
        let i = req.input;
        let opts = PutOptions {
            headers: object_headers(HeaderInput {
                content_type: i.content_type,
                content_encoding: i.content_encoding,
                content_disposition: i.content_disposition,
                content_language: i.content_language,
                cache_control: i.cache_control,
                metadata: i.metadata,
            }),
            ..PutOptions::default()
        };
        let up = self.store.create_upload(&i.bucket, &i.key, opts).await.map_err(s3_err)?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(i.bucket),
            key: Some(i.key),
            upload_id: Some(up.upload_id),
            ..Default::default()
        }))
    }

    async fn upload_part(&self, req: S3Request<UploadPartInput>) -> S3Result<S3Response<UploadPartOutput>> {
        self.allow(&req, Some(&req.input.bucket), Some(Op::Write), "UploadPart")?;
        let checksum = requested_checksum!(req);
        let i = req.input;
        let number =
            u32::try_from(i.part_number).map_err(|_| s3_error!(InvalidArgument, "part numbers are 1 to 10000"))?;
        let body = i.body.ok_or_else(|| s3_error!(IncompleteBody, "a part needs a body"))?;
        let opts = PutOptions {
            content_length: i.content_length.and_then(|n| u64::try_from(n).ok()),
            content_md5: i.content_md5,
            checksum,
            ..PutOptions::default()
        };
        let part = self
            .store
            .upload_part(&i.bucket, &i.key, &i.upload_id, number, self.body_in(&i.bucket, body), opts)
            .await
            .map_err(s3_err)?;
        let [crc32, crc32c, sha256] = checksum_fields(part.checksum.as_ref());
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(quoted(&part.etag)),
            checksum_crc32: crc32,
            checksum_crc32c: crc32c,
            checksum_sha256: sha256,
            ..Default::default()
        }))
    }

    async fn list_parts(&self, req: S3Request<ListPartsInput>) -> S3Result<S3Response<ListPartsOutput>> {
        self.allow(&req, Some(&req.input.bucket), Some(Op::Read), "ListParts")?;
        let i = req.input;
        let parts = self.store.list_parts(&i.bucket, &i.key, &i.upload_id).await.map_err(s3_err)?;
        let parts = parts
            .into_iter()
            .map(|p| {
                let [crc32, crc32c, sha256] = checksum_fields(p.checksum.as_ref());
                Part {
                    part_number: i32::try_from(p.part_number).ok(),
                    size: Some(i64_of(p.size)),
                    e_tag: Some(quoted(&p.etag)),
                    last_modified: Some(ts(p.last_modified_ms)),
                    checksum_crc32: crc32,
                    checksum_crc32c: crc32c,
                    checksum_sha256: sha256,
                    ..Default::default()
                }
            })
            .collect();
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(i.bucket),
            key: Some(i.key),
            upload_id: Some(i.upload_id),
            parts: Some(parts),
            is_truncated: Some(false),
            ..Default::default()
        }))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        self.allow(&req, Some(&req.input.bucket), Some(Op::Read), "ListMultipartUploads")?;
        let i = req.input;
        let ups = self.store.list_uploads(&i.bucket, i.prefix.as_deref().unwrap_or("")).await.map_err(s3_err)?;
        let uploads = ups
            .into_iter()
            .map(|u| MultipartUpload {
                key: Some(u.key),
                upload_id: Some(u.upload_id),
                initiated: Some(ts(u.initiated_ms)),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(i.bucket),
            prefix: i.prefix,
            uploads: Some(uploads),
            is_truncated: Some(false),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.allow(&req, Some(&req.input.bucket), Some(Op::Write), "CompleteMultipartUpload")?;
        let i = req.input;
        let listed = i.multipart_upload.and_then(|m| m.parts).unwrap_or_default();
        let mut parts = Vec::with_capacity(listed.len());
        for p in listed {
            let number = p.part_number.and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
            let etag = p.e_tag.map(|e| e.value().to_owned()).unwrap_or_default();
            parts.push((number, etag));
        }
        let m = self.store.complete_upload(&i.bucket, &i.key, &i.upload_id, &parts).await.map_err(s3_err)?;
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(i.bucket),
            key: Some(i.key),
            e_tag: Some(quoted(&m.etag)),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.allow(&req, Some(&req.input.bucket), Some(Op::Write), "AbortMultipartUpload")?;
        let i = req.input;
        self.store.abort_upload(&i.bucket, &i.key, &i.upload_id).await.map_err(s3_err)?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }
}

impl S3Api {
    /// Conditional PUT: `If-None-Match: *` (create only) and `If-Match: ETAG` (replace only that
    /// version).
    async fn put_preconditions(
        &self,
        bucket: &str,
        key: &str,
        if_match: Option<&ETagCondition>,
        if_none_match: Option<&ETagCondition>,
    ) -> S3Result<()> {
        if if_match.is_none() && if_none_match.is_none() {
            return Ok(());
        }
        let current = match self.store.head_object(bucket, key).await {
            Ok(m) => Some(m),
            Err(ObjectError::NoSuchKey(..)) => None,
            Err(e) => return Err(s3_err(e)),
        };
        if if_none_match.is_some() && current.is_some() {
            return Err(s3_error!(PreconditionFailed, "If-None-Match: the object exists"));
        }
        match (if_match, &current) {
            (Some(_), None) => Err(s3_err(ObjectError::NoSuchKey(bucket.to_owned(), key.to_owned()))),
            (Some(ETagCondition::ETag(e)), Some(m)) if e.value() != m.etag => {
                Err(s3_error!(PreconditionFailed, "If-Match: the ETag is {}", m.etag))
            }
            _ => Ok(()),
        }
    }
}
