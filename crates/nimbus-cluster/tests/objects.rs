//! S3 object storage on the JetStream Object Store, against a real three-server cluster: the
//! trait's semantics case by case (written via one node, read via another), and a server killed
//! mid-run losing no acknowledged PUT.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use nimbus_cluster::objects::multipart_etag;
use nimbus_cluster::testing::NatsServers;
use nimbus_cluster::{Cluster, ClusterOptions, NatsObjects};
use nimbus_core::objects::{
    ByteRange, ByteStream, Checksum, ChecksumAlgorithm, Expected, ListQuery, ObjectError, ObjectHeaders, ObjectStore,
    PutOptions, MIN_PART_BYTES,
};

/// A body from chunks.
fn body(parts: Vec<Vec<u8>>) -> ByteStream {
    Box::pin(Iter(parts.into_iter().map(|p| Ok(Bytes::from(p))).collect::<Vec<_>>().into_iter()))
}

fn one(data: &[u8]) -> ByteStream {
    body(vec![data.to_vec()])
}

struct Iter(std::vec::IntoIter<Result<Bytes, std::io::Error>>);

impl futures_core::Stream for Iter {
    type Item = Result<Bytes, std::io::Error>;
    fn poll_next(mut self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        std::task::Poll::Ready(self.0.next())
    }
}

async fn read_all(mut b: ByteStream) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = std::future::poll_fn(|cx| b.as_mut().poll_next(cx)).await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

fn md5_hex(data: &[u8]) -> String {
    hex::encode(<md5::Md5 as md5::Digest>::digest(data))
}

/// A node connected to server `first` of `servers` (the others as fall-backs).
async fn node(servers: &NatsServers, first: usize, name: &str) -> NatsObjects {
    let urls = servers.urls();
    let mut list = vec![urls[first].clone()];
    list.extend(urls.iter().enumerate().filter(|(i, _)| *i != first).map(|(_, u)| u.clone()));
    let cluster = Cluster::connect(&ClusterOptions::new(&list.join(","), name).unwrap()).await.unwrap();
    NatsObjects::open(&cluster).await.unwrap()
}

/// Node A on server 0 and node C on server 2 of a fresh three-server cluster.
async fn two_nodes() -> (NatsServers, NatsObjects, NatsObjects) {
    let servers = NatsServers::start(3).await.unwrap();
    let a = node(&servers, 0, "node-a").await;
    let c = node(&servers, 2, "node-c").await;
    (servers, a, c)
}

#[tokio::test]
async fn an_object_written_via_node_a_is_read_via_node_c() {
    let (servers, a, c) = two_nodes().await;
    assert!(a.create_bucket("photos.example").await.unwrap());
    assert!(!c.create_bucket("photos.example").await.unwrap(), "node C sees the bucket node A made");
    let mut opts = PutOptions::default();
    opts.headers.content_type = Some("image/png".into());
    opts.headers.metadata.insert("camera".into(), "x100".into());
    let put = a.put_object("photos.example", "2026/cat 1.png", one(b"meow"), opts).await.unwrap();
    assert_eq!(put.etag, md5_hex(b"meow"));
    let got = c.get_object("photos.example", "2026/cat 1.png", None).await.unwrap();
    assert_eq!(got.meta, put, "the same metadata on every node");
    assert_eq!(read_all(got.body).await, b"meow");
    assert_eq!(
        c.head_object("photos.example", "2026/cat 1.png").await.unwrap().headers.content_type.as_deref(),
        Some("image/png")
    );
    // The Object Store's own format: a plain NATS client reads the object (and checks its SHA-256).
    let client = async_nats::connect(servers.urls()[1].as_str()).await.unwrap();
    let store = async_nats::jetstream::new(client).get_object_store("nimbus-s3-photos_example").await.unwrap();
    let mut plain = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut store.get("2026/cat 1.png").await.unwrap(), &mut plain).await.unwrap();
    assert_eq!(plain, b"meow");
    // The longest key S3 allows, any bytes.
    let long = "ключ/".repeat(1024 / "ключ/".len()) + &"k".repeat(1024 % "ключ/".len());
    assert_eq!(long.len(), 1024);
    a.put_object("photos.example", &long, one(b"long"), PutOptions::default()).await.unwrap();
    assert_eq!(read_all(c.get_object("photos.example", &long, None).await.unwrap().body).await, b"long");
    // And back: a delete via C is seen by A at once.
    assert!(c.delete_object("photos.example", "2026/cat 1.png").await.unwrap());
    assert!(matches!(a.head_object("photos.example", "2026/cat 1.png").await, Err(ObjectError::NoSuchKey(..))));
}

type Case<'a> =
    (&'static str, Pin<Box<dyn Future<Output = Result<(), ObjectError>> + Send + 'a>>, fn(&ObjectError) -> bool);

/// The errors S3 clients branch on, one case per row; after them, nothing was stored.
#[tokio::test]
async fn refusals_are_s3s_and_store_nothing() {
    let (_servers, a, c) = two_nodes().await;
    a.create_bucket("b").await.unwrap();
    a.put_object("b", "small", one(b"hello world"), PutOptions::default()).await.unwrap();
    let broken: ByteStream = Box::pin(Iter(
        vec![Ok(Bytes::from_static(b"part")), Err(std::io::Error::other("client went away"))].into_iter(),
    ));
    let crc = PutOptions {
        checksum: Some((ChecksumAlgorithm::Crc32, Some(Expected::Value("AAAAAA==".into())))),
        ..PutOptions::default()
    };
    let md5 = PutOptions { content_md5: Some("AAAAAAAAAAAAAAAAAAAAAA==".into()), ..PutOptions::default() };
    let length = PutOptions { content_length: Some(5), ..PutOptions::default() };
    let long = "k".repeat(1025);
    let cases: Vec<Case<'_>> = vec![
        (
            "no bucket",
            Box::pin(drop_ok(a.put_object("nope", "k", one(b"x"), PutOptions::default()))),
            |e| matches!(e, ObjectError::NoSuchBucket(b) if b == "nope"),
        ),
        ("key too long", Box::pin(drop_ok(a.put_object("b", &long, one(b"x"), PutOptions::default()))), |e| {
            matches!(e, ObjectError::KeyTooLong(1025))
        }),
        ("body failed", Box::pin(drop_ok(a.put_object("b", "k", broken, PutOptions::default()))), |e| {
            matches!(e, ObjectError::Body(_))
        }),
        ("bad checksum", Box::pin(drop_ok(a.put_object("b", "k", one(b"x"), crc))), |e| {
            matches!(e, ObjectError::BadDigest("CRC32"))
        }),
        ("bad Content-MD5", Box::pin(drop_ok(a.put_object("b", "k", one(b"x"), md5))), |e| {
            matches!(e, ObjectError::BadDigest("Content-MD5"))
        }),
        ("short body", Box::pin(drop_ok(a.put_object("b", "k", one(b"x"), length))), |e| {
            matches!(e, ObjectError::IncompleteBody { declared: 5, actual: 1 })
        }),
        ("no key", Box::pin(drop_ok(c.get_object("b", "k", None))), |e| matches!(e, ObjectError::NoSuchKey(..))),
        ("range past the end", Box::pin(drop_ok(c.get_object("b", "small", Some(ByteRange::From(11, None))))), |e| {
            matches!(e, ObjectError::InvalidRange(11))
        }),
        ("empty suffix", Box::pin(drop_ok(c.get_object("b", "small", Some(ByteRange::Suffix(0))))), |e| {
            matches!(e, ObjectError::InvalidRange(11))
        }),
        ("copy from nothing", Box::pin(drop_ok(c.copy_object("b", "missing", "b", "k", None))), |e| {
            matches!(e, ObjectError::NoSuchKey(..))
        }),
        ("no upload", Box::pin(drop_ok(c.list_parts("b", "k", "0123abcd"))), |e| {
            matches!(e, ObjectError::NoSuchUpload(_))
        }),
        ("not an upload id", Box::pin(drop_ok(c.abort_upload("b", "k", "../small"))), |e| {
            matches!(e, ObjectError::NoSuchUpload(_))
        }),
        ("part number 0", Box::pin(drop_ok(c.upload_part("b", "k", "x", 0, one(b"x"), PutOptions::default()))), |e| {
            matches!(e, ObjectError::InvalidPartNumber(0))
        }),
        (
            "part number 10001",
            Box::pin(drop_ok(c.upload_part("b", "k", "x", 10_001, one(b"x"), PutOptions::default()))),
            |e| matches!(e, ObjectError::InvalidPartNumber(10_001)),
        ),
    ];
    for (name, op, expected) in cases {
        match op.await {
            Ok(()) => panic!("{name}: succeeded"),
            Err(e) => assert!(expected(&e), "{name}: {e:?}"),
        }
    }
    assert!(matches!(c.head_object("b", "k").await, Err(ObjectError::NoSuchKey(..))));
    let info = c.head_bucket("b").await.unwrap().unwrap();
    assert_eq!((info.objects, info.bytes), (1, 11), "only the one good PUT is there");
}

async fn drop_ok<T>(f: impl Future<Output = Result<T, ObjectError>>) -> Result<(), ObjectError> {
    f.await.map(|_| ())
}

#[tokio::test]
async fn put_get_ranges_checksums_copy_and_versions() {
    let (_servers, a, c) = two_nodes().await;
    a.create_bucket("b").await.unwrap();
    // Chunked over several messages: 300 KiB in 7 KiB pieces.
    let big: Vec<u8> = (0..300 * 1024u32).map(|i| (i % 251) as u8).collect();
    let meta = a
        .put_object("b", "big", body(big.chunks(7 * 1024).map(<[u8]>::to_vec).collect()), PutOptions::default())
        .await
        .unwrap();
    assert_eq!((meta.size, meta.etag.as_str()), (big.len() as u64, md5_hex(&big).as_str()));
    assert_eq!(read_all(c.get_object("b", "big", None).await.unwrap().body).await, big);
    for (range, want) in [
        (ByteRange::From(6, Some(7)), 6..8),
        (ByteRange::From(131_000, Some(140_000)), 131_000..140_001),
        (ByteRange::From(200_000, None), 200_000..big.len()),
        (ByteRange::Suffix(3), big.len() - 3..big.len()),
        (ByteRange::Suffix(10_000_000), 0..big.len()),
    ] {
        let got = c.get_object("b", "big", Some(range)).await.unwrap();
        assert_eq!((got.start, got.end), (want.start as u64, want.end as u64), "{range:?}");
        assert_eq!(read_all(got.body).await, big[want], "{range:?}");
    }
    // Checksums S3 clients send, known values for "hello world".
    for (alg, want) in [
        (ChecksumAlgorithm::Crc32, "DUoRhQ=="),
        (ChecksumAlgorithm::Crc32c, "yZRlqg=="),
        (ChecksumAlgorithm::Sha256, "uU0nuZNNPgilLlLX2n2r+sSE7+N6U4DukIj3rOLvzek="),
    ] {
        let opts = PutOptions { checksum: Some((alg, Some(Expected::Value(want.into())))), ..PutOptions::default() };
        a.put_object("b", "hw", one(b"hello world"), opts).await.unwrap();
        assert_eq!(
            c.head_object("b", "hw").await.unwrap().checksum,
            Some(Checksum { algorithm: alg, value: want.into() })
        );
    }
    // Copy within and across buckets, keeping or replacing the headers.
    c.create_bucket("other").await.unwrap();
    let mut h = ObjectHeaders::default();
    h.metadata.insert("new".into(), "1".into());
    let copied = c.copy_object("b", "hw", "other", "dst", Some(h.clone())).await.unwrap();
    assert_eq!(copied.etag, md5_hex(b"hello world"));
    assert_eq!(copied.checksum.map(|c| c.algorithm), Some(ChecksumAlgorithm::Sha256), "the source's algorithm");
    assert_eq!(a.head_object("other", "dst").await.unwrap().headers, h);
    c.copy_object("b", "big", "b", "big2", None).await.unwrap();
    assert_eq!(read_all(a.get_object("b", "big2", None).await.unwrap().body).await, big);
    // A reader that opened a version keeps it through an overwrite and a delete.
    let reading = c.get_object("b", "big", None).await.unwrap();
    a.put_object("b", "big", one(b"new"), PutOptions::default()).await.unwrap();
    let reading2 = c.get_object("b", "big", None).await.unwrap();
    assert!(a.delete_object("b", "big").await.unwrap());
    assert!(!a.delete_object("b", "big").await.unwrap(), "a second delete finds nothing");
    assert_eq!(read_all(reading.body).await, big);
    assert_eq!(read_all(reading2.body).await, b"new");
    assert!(matches!(c.get_object("b", "big", None).await, Err(ObjectError::NoSuchKey(..))));
    // An empty object.
    a.put_object("b", "empty", one(b""), PutOptions::default()).await.unwrap();
    let e = c.get_object("b", "empty", None).await.unwrap();
    assert_eq!((e.meta.size, e.meta.etag.as_str()), (0, "d41d8cd98f00b204e9800998ecf8427e"));
    assert!(read_all(e.body).await.is_empty());
}

fn keys(page: &nimbus_core::objects::ListPage) -> Vec<&str> {
    page.objects.iter().map(|m| m.key.as_str()).collect()
}

#[tokio::test]
async fn listings_and_bucket_rules() {
    let (_servers, a, c) = two_nodes().await;
    a.create_bucket("b").await.unwrap();
    // Written out of order, with an overwrite and a delete: listings are in key byte order.
    for k in ["d", "c/y", "é", "a/2", "b", "c/x/1", "a/1", "gone"] {
        a.put_object("b", k, one(k.as_bytes()), PutOptions::default()).await.unwrap();
    }
    a.put_object("b", "b", one(b"bb"), PutOptions::default()).await.unwrap();
    a.delete_object("b", "gone").await.unwrap();
    let all = c.list_objects("b", &ListQuery { max_keys: 1000, ..ListQuery::default() }).await.unwrap();
    assert_eq!(keys(&all), ["a/1", "a/2", "b", "c/x/1", "c/y", "d", "é"]);
    assert_eq!((all.objects[2].size, all.next.as_deref()), (2, None));
    let q = ListQuery { delimiter: Some("/".into()), max_keys: 2, ..ListQuery::default() };
    let p1 = c.list_objects("b", &q).await.unwrap();
    assert_eq!(
        (keys(&p1), p1.common_prefixes.clone(), p1.next.clone()),
        (vec!["b"], vec!["a/".to_owned()], Some("b".to_owned()))
    );
    let p2 = c.list_objects("b", &ListQuery { after: p1.next, ..q.clone() }).await.unwrap();
    assert_eq!((keys(&p2), p2.common_prefixes.clone()), (vec!["d"], vec!["c/".to_owned()]));
    let p3 = c.list_objects("b", &ListQuery { after: p2.next, ..q.clone() }).await.unwrap();
    assert_eq!((keys(&p3), p3.next.clone()), (vec!["é"], None));
    let cq = ListQuery { prefix: "c/".into(), delimiter: Some("/".into()), max_keys: 10, ..ListQuery::default() };
    let cp = c.list_objects("b", &cq).await.unwrap();
    assert_eq!((keys(&cp), cp.common_prefixes.clone()), (vec!["c/y"], vec!["c/x/".to_owned()]));
    let start_after =
        c.list_objects("b", &ListQuery { after: Some("c".into()), max_keys: 2, ..ListQuery::default() }).await.unwrap();
    assert_eq!(keys(&start_after), ["c/x/1", "c/y"]);
    // Buckets: listed with sizes; a bucket with objects or uploads is deleted only by force.
    c.create_bucket("empty.one").await.unwrap();
    let buckets = a.list_buckets().await.unwrap();
    let named: Vec<(&str, u64)> = buckets.iter().map(|b| (b.name.as_str(), b.objects)).collect();
    assert_eq!(named, [("b", 7), ("empty.one", 0)]);
    assert!(buckets[0].created_ms > 0);
    assert!(matches!(c.delete_bucket("b", false).await, Err(ObjectError::BucketNotEmpty(_))));
    c.create_upload("empty.one", "k", PutOptions::default()).await.unwrap();
    assert!(matches!(c.delete_bucket("empty.one", false).await, Err(ObjectError::BucketNotEmpty(_))));
    assert!(c.delete_bucket("empty.one", true).await.unwrap());
    assert!(c.delete_bucket("b", true).await.unwrap());
    assert!(!a.delete_bucket("b", true).await.unwrap());
    assert_eq!(a.head_bucket("b").await.unwrap(), None);
    assert!(matches!(
        a.put_object("b", "k", one(b"x"), PutOptions::default()).await,
        Err(ObjectError::NoSuchBucket(_))
    ));
    assert!(a.list_buckets().await.unwrap().is_empty());
    // Recreated, it starts empty (on both nodes).
    assert!(a.create_bucket("b").await.unwrap());
    assert!(c.list_objects("b", &ListQuery { max_keys: 10, ..ListQuery::default() }).await.unwrap().objects.is_empty());
}

#[tokio::test]
async fn multipart_uploads_complete_with_s3s_etag() {
    let (servers, a, c) = two_nodes().await;
    a.create_bucket("b").await.unwrap();
    let first: Vec<u8> = (0..MIN_PART_BYTES as u32).map(|i| (i % 253) as u8).collect();
    let mut opts = PutOptions::default();
    opts.headers.content_type = Some("application/zip".into());
    let up = a.create_upload("b", "m.zip", opts).await.unwrap();
    assert_eq!(c.list_uploads("b", "m").await.unwrap(), vec![up.clone()]);
    assert!(c.list_uploads("b", "x").await.unwrap().is_empty());
    // Parts out of order, via both nodes, one re-uploaded.
    let old = c.upload_part("b", "m.zip", &up.upload_id, 2, one(b"old tail"), PutOptions::default()).await.unwrap();
    let p2 = a
        .upload_part(
            "b",
            "m.zip",
            &up.upload_id,
            2,
            one(b"tail"),
            PutOptions { content_length: Some(4), ..PutOptions::default() },
        )
        .await
        .unwrap();
    assert_ne!(p2.etag, old.etag);
    let p1 = c
        .upload_part(
            "b",
            "m.zip",
            &up.upload_id,
            1,
            body(first.chunks(100_000).map(<[u8]>::to_vec).collect()),
            PutOptions::default(),
        )
        .await
        .unwrap();
    let listed = a.list_parts("b", "m.zip", &up.upload_id).await.unwrap();
    assert_eq!(listed.iter().map(|p| (p.part_number, p.size)).collect::<Vec<_>>(), [(1, MIN_PART_BYTES), (2, 4)]);
    assert!(
        matches!(a.list_parts("b", "other", &up.upload_id).await, Err(ObjectError::NoSuchUpload(_))),
        "an upload belongs to its key"
    );
    let wrong_order = [(2, p2.etag.clone()), (1, p1.etag.clone())];
    assert!(matches!(
        a.complete_upload("b", "m.zip", &up.upload_id, &wrong_order).await,
        Err(ObjectError::InvalidPartOrder)
    ));
    let stale = [(1, p1.etag.clone()), (2, md5_hex(b"old tail"))];
    assert!(matches!(a.complete_upload("b", "m.zip", &up.upload_id, &stale).await, Err(ObjectError::InvalidPart(2))));
    let parts = [(1, format!("\"{}\"", p1.etag)), (2, p2.etag.clone())];
    let meta = a.complete_upload("b", "m.zip", &up.upload_id, &parts).await.unwrap();
    // S3's ETag: md5 of the binary part md5s, then -N.
    let mut joined = hex::decode(md5_hex(&first)).unwrap();
    joined.extend(hex::decode(md5_hex(b"tail")).unwrap());
    assert_eq!(meta.etag, format!("{}-2", md5_hex(&joined)));
    assert_eq!(meta.etag, multipart_etag(&[p1.etag.clone(), p2.etag.clone()]));
    assert_eq!(
        (meta.size, meta.parts, meta.headers.content_type.as_deref()),
        (MIN_PART_BYTES + 4, Some(2), Some("application/zip"))
    );
    let got = c.get_object("b", "m.zip", None).await.unwrap();
    assert_eq!(got.meta, meta);
    let whole = read_all(got.body).await;
    assert_eq!(
        (whole.len() as u64, &whole[..first.len()] == first.as_slice(), &whole[first.len()..]),
        (MIN_PART_BYTES + 4, true, &b"tail"[..])
    );
    // Ranges of a 41-chunk object start from its seek index (every 16th chunk: 0, 16, 32),
    // around and across the indexed chunks, and at the very end.
    let client = async_nats::connect(servers.urls()[0].as_str()).await.unwrap();
    let store = async_nats::jetstream::new(client).get_object_store("nimbus-s3-b").await.unwrap();
    let stored: serde_json::Value =
        serde_json::from_str(&store.info("m.zip").await.unwrap().metadata["nimbus"]).unwrap();
    assert_eq!(stored["seek"].as_array().map(Vec::len), Some(3), "{stored}");
    let chunk = nimbus_cluster::objects::CHUNK as u64;
    let stride = chunk * nimbus_cluster::objects::STRIDE as u64;
    for range in [
        ByteRange::From(0, Some(3)),
        ByteRange::From(stride - 1, Some(stride + 1)),
        ByteRange::From(stride, Some(2 * stride + 7)),
        ByteRange::From(2 * stride + 5, None),
        ByteRange::From(MIN_PART_BYTES - 2, Some(MIN_PART_BYTES + 1)),
        ByteRange::Suffix(10),
    ] {
        let got = a.get_object("b", "m.zip", Some(range)).await.unwrap();
        let (s, e) = (got.start as usize, got.end as usize);
        assert_eq!(read_all(got.body).await, &whole[s..e], "{range:?}");
    }
    assert!(
        matches!(c.list_parts("b", "m.zip", &up.upload_id).await, Err(ObjectError::NoSuchUpload(_))),
        "completed uploads are gone"
    );
    assert!(c.list_uploads("b", "").await.unwrap().is_empty());
    // A small part that is not the last; then abort.
    let up = c.create_upload("b", "s", PutOptions::default()).await.unwrap();
    let x = c.upload_part("b", "s", &up.upload_id, 1, one(b"aa"), PutOptions::default()).await.unwrap();
    let z = c.upload_part("b", "s", &up.upload_id, 2, one(b"zz"), PutOptions::default()).await.unwrap();
    assert!(matches!(
        c.complete_upload("b", "s", &up.upload_id, &[(1, x.etag), (2, z.etag)]).await,
        Err(ObjectError::EntityTooSmall(1, 2))
    ));
    a.abort_upload("b", "s", &up.upload_id).await.unwrap();
    assert!(matches!(c.abort_upload("b", "s", &up.upload_id).await, Err(ObjectError::NoSuchUpload(_))));
    assert!(matches!(c.head_object("b", "s").await, Err(ObjectError::NoSuchKey(..))));
    assert_eq!(a.head_bucket("b").await.unwrap().map(|b| b.objects), Some(1));
}

/// PUTs run while a server dies (the bucket's stream leader when it can be found) and comes
/// back: every PUT that was acknowledged reads back whole, from a node on another server.
#[tokio::test]
async fn a_killed_server_loses_no_acknowledged_put() {
    let mut servers = NatsServers::start(3).await.unwrap();
    let writer = node(&servers, 1, "writer").await;
    writer.create_bucket("b").await.unwrap();
    let victim = stream_leader(&servers, "OBJ_nimbus-s3-b").await.unwrap_or(0);
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    let mut failed = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut restarted = false;
    for i in 0..150u32 {
        if Instant::now() > deadline {
            break;
        }
        if i == 40 {
            servers.kill(victim);
        }
        if i == 110 {
            servers.restart(victim).await.unwrap();
            restarted = true;
        }
        // 2 to 3 chunks each, different bytes per PUT.
        let data: Vec<u8> = (0..(200_000 + i * 997)).map(|j| (j.wrapping_mul(31).wrapping_add(i)) as u8).collect();
        let key = format!("k{i:03}");
        let put = tokio::time::timeout(
            Duration::from_secs(10),
            writer.put_object(
                "b",
                &key,
                body(data.chunks(65_536).map(<[u8]>::to_vec).collect()),
                PutOptions::default(),
            ),
        )
        .await;
        match put {
            Ok(Ok(meta)) => {
                assert_eq!(meta.etag, md5_hex(&data));
                acked.insert(key, meta.etag);
            }
            _ => failed += 1,
        }
    }
    eprintln!("killed n{victim}: {} PUTs acknowledged, {failed} failed", acked.len());
    assert!(restarted, "the run reached the restart within its time bound");
    let after_kill = acked.keys().filter(|k| k.as_str() >= "k040").count();
    assert!(after_kill >= 50, "only {after_kill} PUTs were acknowledged after the kill ({failed} failed)");
    // Read every acknowledged PUT through a node on a server that was never killed.
    let reader = node(&servers, if victim == 2 { 0 } else { 2 }, "reader").await;
    for (key, etag) in &acked {
        let got =
            reader.get_object("b", key, None).await.unwrap_or_else(|e| panic!("{key} acknowledged, then lost: {e}"));
        assert_eq!(&got.meta.etag, etag);
        assert_eq!(&md5_hex(&read_all(got.body).await), etag, "{key}");
    }
}

/// The index of the server leading a stream, from its cluster info (`n0`, `n1`, …).
async fn stream_leader(servers: &NatsServers, stream: &str) -> Option<usize> {
    let client = async_nats::connect(servers.urls()[0].as_str()).await.ok()?;
    let mut s = async_nats::jetstream::new(client).get_stream(stream).await.ok()?;
    let info = s.info().await.ok()?;
    info.cluster.as_ref()?.leader.as_deref()?.strip_prefix('n')?.parse().ok()
}

/// Changes of watched buckets reach the outbox shared by every node: acknowledged changes once
/// each, with their size and ETag; unwatched buckets, deletes of nothing and refused PUTs none.
/// Rows stay with the node that read them until it marks them done, and a waiting reader wakes
/// as soon as a change is acknowledged.
#[tokio::test]
async fn watched_changes_reach_the_shared_outbox() {
    use nimbus_core::events::S3EventName;
    let (_servers, a, c) = two_nodes().await;
    for b in ["b", "quiet"] {
        a.create_bucket(b).await.unwrap();
    }
    let watched = std::collections::BTreeSet::from(["b".to_owned()]);
    a.watch_buckets(watched.clone());
    c.watch_buckets(watched);
    let meta = a.put_object("b", "a b.txt", one(b"hello"), PutOptions::default()).await.unwrap();
    c.put_object("quiet", "q", one(b"x"), PutOptions::default()).await.unwrap();
    c.copy_object("b", "a b.txt", "b", "copy", None).await.unwrap();
    let up = a.create_upload("b", "multi", PutOptions::default()).await.unwrap();
    let p1 = a.upload_part("b", "multi", &up.upload_id, 1, one(b"part"), PutOptions::default()).await.unwrap();
    a.complete_upload("b", "multi", &up.upload_id, &[(1, p1.etag)]).await.unwrap();
    assert!(c.delete_object("b", "copy").await.unwrap());
    assert!(!c.delete_object("b", "never-there").await.unwrap());
    let refused = PutOptions { content_length: Some(9), ..PutOptions::default() };
    assert!(a.put_object("b", "refused", one(b"x"), refused).await.is_err());

    // Read via node C: everything node A and C did, in order.
    let rows = c.outbox(100, Duration::ZERO).await.unwrap();
    let events: Vec<(S3EventName, &str, &str)> =
        rows.iter().map(|r| (r.event, r.bucket.as_str(), r.key.as_str())).collect();
    assert_eq!(
        events,
        [
            (S3EventName::Put, "b", "a b.txt"),
            (S3EventName::Copy, "b", "copy"),
            (S3EventName::CompleteMultipartUpload, "b", "multi"),
            (S3EventName::Delete, "b", "copy"),
        ]
    );
    assert_eq!(
        (rows[0].size, rows[0].etag.as_deref(), rows[0].time_ms),
        (Some(5), Some(meta.etag.as_str()), meta.last_modified_ms)
    );
    assert!(rows[2].etag.as_deref().unwrap().ends_with("-1"));
    assert_eq!((rows[3].size, rows[3].etag.as_deref()), (None, None));
    assert!(rows.windows(2).all(|w| w[0].id < w[1].id), "ids grow: {rows:?}");
    // Node A gets none of them (C holds them); C gets them again until it marks them done.
    assert!(a.outbox(100, Duration::ZERO).await.unwrap().is_empty());
    assert_eq!(c.outbox(100, Duration::ZERO).await.unwrap(), rows);
    c.outbox_done(&rows.iter().map(|r| r.id).collect::<Vec<_>>()).await.unwrap();
    assert!(c.outbox(100, Duration::ZERO).await.unwrap().is_empty());

    // A reader waiting on C wakes when A's PUT is acknowledged.
    let reader = tokio::spawn({
        let c = c.clone();
        async move { c.outbox(10, Duration::from_secs(30)).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    a.put_object("b", "later", one(b"x"), PutOptions::default()).await.unwrap();
    let woke = tokio::time::timeout(Duration::from_secs(10), reader).await.unwrap().unwrap();
    assert_eq!(woke.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), ["later"]);
    assert!(woke[0].id > rows[3].id, "ids are never reused");
    assert!(started.elapsed() < Duration::from_secs(10));
    // Unwatched, nothing more.
    a.watch_buckets(std::collections::BTreeSet::new());
    c.outbox_done(&[woke[0].id]).await.unwrap();
    a.put_object("b", "unwatched", one(b"x"), PutOptions::default()).await.unwrap();
    assert!(c.outbox(10, Duration::from_millis(300)).await.unwrap().is_empty());
}
