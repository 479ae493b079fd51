//! BundleStore's retries over real HTTP: the crate's bundle server behind a fault-injecting
//! front (an `HttpServer` that forwards to it with reqwest and cuts, ends, stalls or corrupts
//! the answer, or answers a status itself), on both protocols. The front records each
//! request's keys and arrival time and, for each answer, which members it let through, so
//! the assertions are on counts and keys, not on timing (except "at least Retry-After
//! between two requests", measured at the front).

#![cfg(all(feature = "server", feature = "bundle"))]

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use getmany::conn::{ConnectionLimits, HttpServer};
use getmany::server::BundleServer;
use getmany::testing::{FaultInjector, FaultObjectStore, pattern};
use getmany::{
    BundleCompression, BundleProtocol, BundleStore, BundleStoreBuilder, ObjectStoreStore, Request,
    Store,
};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use object_store::memory::InMemory;
use object_store::{ObjectStoreExt, PutPayload};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type FrontBody = UnsyncBoxBody<Bytes, BoxError>;

const PROTOCOLS: [BundleProtocol; 2] = [BundleProtocol::Tigris, BundleProtocol::AiStore];
/// Objects `o/0` .. `o/9` in the bucket.
const OBJECTS: usize = 10;
const SIZE: usize = 3000;

/// A place in a bundle's tar body, counting file members from 0 in the order they come.
#[derive(Debug, Clone, Copy)]
enum At {
    /// Halfway through member `k`'s data.
    Mid(usize),
    /// Right after member `k` (its data and padding): a member boundary.
    After(usize),
    /// Halfway through the body, whatever it holds (a compressed body).
    Half,
}

/// What the front does with one request.
#[derive(Debug, Clone)]
enum Act {
    /// Forwards it and its whole answer.
    Pass,
    /// Forwards it; sends the answer up to `At`, then breaks the connection.
    Cut(At),
    /// Forwards it; sends the answer up to `At`, then ends the body cleanly.
    End(At),
    /// Forwards it; sends the answer up to `At`, then nothing, keeping the connection open.
    Stall(At),
    /// Forwards it; sends the whole answer with a byte of member `k`'s header flipped.
    Corrupt(usize),
    /// Never answers (no response head).
    NoHead,
    /// Answers this status itself, with this `Retry-After`.
    Status(u16, Option<RetryAfter>),
}

/// A `Retry-After` the front sends.
#[derive(Debug, Clone, Copy)]
enum RetryAfter {
    /// Delay-seconds.
    Seconds(u64),
    /// An HTTP-date this many seconds after the moment the front answers.
    DateIn(u64),
}

/// One request as the front saw it.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    /// The keys asked for (Tigris `keys`, AIStore `in[].objname`), in order.
    keys: Vec<String>,
    /// The whole members the front let through, by name, in order.
    passed: Vec<String>,
}

struct Front {
    upstream: String,
    script: Mutex<VecDeque<Act>>,
    /// What to do once the script is done.
    then: Act,
    seen: Mutex<Vec<Seen>>,
    client: reqwest::Client,
}

/// The fault-injecting front, stopped when dropped.
struct FrontServer {
    front: Arc<Front>,
    http: HttpServer,
}

impl FrontServer {
    async fn start(upstream: &BundleServer, script: Vec<Act>, then: Act) -> FrontServer {
        let front = Arc::new(Front {
            upstream: upstream.url(),
            script: Mutex::new(script.into()),
            then,
            seen: Mutex::new(Vec::new()),
            client: reqwest::Client::new(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let handler_front = front.clone();
        let http = HttpServer::start(listener, ConnectionLimits::default(), move |req| {
            handle(handler_front.clone(), req)
        })
        .unwrap();
        FrontServer { front, http }
    }

    fn url(&self) -> String {
        format!("http://{}", self.http.local_addr())
    }

    fn seen(&self) -> Vec<Seen> {
        self.front.seen.lock().unwrap().clone()
    }
}

/// Where each file member's data starts, its size and name, in a tar body.
fn members(tar: &[u8]) -> Vec<(u64, u64, u64, String)> {
    let mut archive = tar::Archive::new(tar);
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        out.push((
            entry.raw_header_position(),
            entry.raw_file_position(),
            entry.size(),
            name,
        ));
    }
    out
}

/// The byte offset of `at` in `tar`.
fn offset(tar: &[u8], at: At) -> usize {
    let (k, mid) = match at {
        At::Mid(k) => (k, true),
        At::After(k) => (k, false),
        At::Half => return tar.len() / 2,
    };
    let members = members(tar);
    let (_, data, size, _) = members[k];
    let end = if mid {
        data + size / 2
    } else {
        data + size.div_ceil(512) * 512
    };
    end as usize
}

/// The names of the members that lie wholly in the first `len` bytes of `tar`.
fn whole_members(tar: &[u8], len: usize) -> Vec<String> {
    members(tar)
        .into_iter()
        .filter(|(_, data, size, _)| (data + size) as usize <= len)
        .map(|(_, _, _, name)| name)
        .filter(|name| name != "__bundle_errors.json")
        .collect()
}

async fn handle(
    front: Arc<Front>,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<FrontBody>, Infallible> {
    let at = Instant::now();
    let (parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let names = |list: &serde_json::Value, field: Option<&str>| -> Vec<String> {
        list.as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|item| match field {
                        Some(field) => item[field].as_str().map(str::to_string),
                        None => item.as_str().map(str::to_string),
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let keys = if parts.uri.path().starts_with("/v1/ml/moss") {
        names(&json["in"], Some("objname"))
    } else {
        names(&json["keys"], None)
    };
    let act = front
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| front.then.clone());
    let mut seen = Seen {
        at,
        keys,
        passed: Vec::new(),
    };
    let record = |seen: Seen| front.seen.lock().unwrap().push(seen);

    match act {
        Act::Status(code, retry_after) => {
            record(seen);
            let mut response = hyper::Response::builder().status(code);
            match retry_after {
                Some(RetryAfter::Seconds(seconds)) => {
                    response = response.header("retry-after", seconds.to_string());
                }
                Some(RetryAfter::DateIn(seconds)) => {
                    let date = http_date(SystemTime::now() + Duration::from_secs(seconds));
                    response = response.header("retry-after", date);
                }
                None => {}
            }
            let body = http_body_util::Full::new(Bytes::from_static(
                b"<Error><Code>SlowDown</Code><Message>injected</Message></Error>",
            ))
            .map_err(|never: Infallible| -> BoxError { match never {} })
            .boxed_unsync();
            return Ok(response.body(body).unwrap());
        }
        Act::NoHead => {
            record(seen);
            futures::future::pending::<()>().await;
            unreachable!();
        }
        _ => {}
    }

    // Forward to the bundle server and take its whole answer.
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut request = front
        .client
        .request(parts.method.clone(), format!("{}{path}", front.upstream))
        .body(body);
    for (name, value) in &parts.headers {
        if name != hyper::header::HOST && name != hyper::header::CONTENT_LENGTH {
            request = request.header(name, value);
        }
    }
    let upstream = request.send().await.unwrap();
    let status = upstream.status();
    let headers = upstream.headers().clone();
    let mut tar = upstream.bytes().await.unwrap().to_vec();

    enum Tail {
        End,
        Break,
        Stall,
    }
    let (len, tail) = match (status.as_u16(), act) {
        (200, Act::Cut(at)) => (offset(&tar, at), Tail::Break),
        (200, Act::End(at)) => (offset(&tar, at), Tail::End),
        (200, Act::Stall(at)) => (offset(&tar, at), Tail::Stall),
        (200, Act::Corrupt(k)) => {
            // The members before the corrupt header are whole.
            let header = members(&tar)[k].0 as usize;
            seen.passed = whole_members(&tar, header);
            tar[header] ^= 0x20;
            (tar.len(), Tail::End)
        }
        _ => (tar.len(), Tail::End),
    };
    let is_tar = headers
        .get(hyper::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/x-tar");
    if status == 200 && is_tar && seen.passed.is_empty() {
        seen.passed = whole_members(&tar, len);
    }
    record(seen);

    let mut response = hyper::Response::builder().status(status.as_u16());
    for (name, value) in &headers {
        if name != hyper::header::CONTENT_LENGTH && name != hyper::header::TRANSFER_ENCODING {
            response = response.header(name, value);
        }
    }
    let head = Bytes::from(tar).slice(..len);
    let first = futures::stream::iter([Ok::<_, BoxError>(Frame::data(head))]);
    let rest = match tail {
        Tail::End => futures::stream::empty().boxed(),
        // The first frame leaves (hyper flushes while the body waits), then the connection
        // breaks: hyper closes it without the chunked body's end.
        Tail::Break => futures::stream::once(async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Err::<Frame<Bytes>, BoxError>("injected cut".into())
        })
        .boxed(),
        Tail::Stall => futures::stream::pending().boxed(),
    };
    let body = StreamBody::new(first.chain(rest)).boxed_unsync();
    Ok(response.body(body).unwrap())
}

/// Objects `o/<i>` of distinct bytes under fault injection, served by a bundle server.
async fn server(faults: &FaultInjector) -> BundleServer {
    let backend = Arc::new(InMemory::new());
    for i in 0..OBJECTS {
        backend
            .put(
                &object_store::path::Path::from(format!("o/{i}")),
                PutPayload::from(content(i)),
            )
            .await
            .unwrap();
    }
    let store = ObjectStoreStore::new(Arc::new(FaultObjectStore::new(backend, faults.clone())));
    BundleServer::builder()
        .bucket("data", Arc::new(store))
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

fn content(i: usize) -> Bytes {
    pattern(i as u64 + 1, SIZE)
}

/// Every object once, and `o/3` and `o/8` twice more: 14 requests for 10 distinct keys.
fn requests() -> Vec<Request> {
    (0..OBJECTS)
        .chain([3, 8, 3, 8])
        .map(|i| Request::whole(format!("o/{i}")))
        .collect()
}

fn all_keys() -> BTreeSet<String> {
    (0..OBJECTS).map(|i| format!("o/{i}")).collect()
}

/// A store on the front with short pauses.
fn client(front: &FrontServer, protocol: BundleProtocol) -> BundleStoreBuilder {
    BundleStore::builder(protocol, front.url(), "data")
        .retry_backoff(Duration::from_millis(10), Duration::from_secs(5))
}

/// Every request's answer, checking that each index is answered exactly once.
async fn answers_of(
    store: &BundleStore,
    requests: &[Request],
) -> HashMap<usize, getmany::Result<Option<Bytes>>> {
    let mut out = HashMap::new();
    let mut stream = store.get_many(requests.to_vec());
    while let Some((index, result)) = stream.next().await {
        assert!(index < requests.len(), "index {index} out of range");
        assert!(
            out.insert(index, result).is_none(),
            "index {index} answered twice"
        );
    }
    assert_eq!(out.len(), requests.len(), "every index answered");
    out
}

/// The object a request reads: `o/<i>` reads object `i`.
fn object_of(request: &Request) -> usize {
    request.key.trim_start_matches("o/").parse().unwrap()
}

/// Every answer is its object's bytes.
fn assert_all_right(
    requests: &[Request],
    answers: &HashMap<usize, getmany::Result<Option<Bytes>>>,
    what: &str,
) {
    for (index, request) in requests.iter().enumerate() {
        match &answers[&index] {
            Ok(Some(bytes)) => assert_eq!(
                *bytes,
                content(object_of(request)),
                "{what}: request {index}"
            ),
            other => panic!("{what}: request {index} ({request}): {other:?}"),
        }
    }
}

fn sorted(keys: &[String]) -> BTreeSet<String> {
    let set: BTreeSet<String> = keys.iter().cloned().collect();
    assert_eq!(set.len(), keys.len(), "a key asked for twice: {keys:?}");
    set
}

/// The keys the second request must ask for: those not whole in the first answer.
fn undelivered(first: &Seen) -> BTreeSet<String> {
    let passed = sorted(&first.passed);
    all_keys().difference(&passed).cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_mid_member_is_retried_for_the_undelivered_keys_only() {
    let faults = FaultInjector::new();
    let server = server(&faults).await;
    let requests = requests();
    for protocol in PROTOCOLS {
        for completion_order in [true, false] {
            let what = format!("{protocol:?}, completion order {completion_order}");
            let before = server.stats().bundles();
            let front = FrontServer::start(&server, vec![Act::Cut(At::Mid(3))], Act::Pass).await;
            let store = client(&front, protocol)
                .completion_order(completion_order)
                .build()
                .unwrap();
            let answers = answers_of(&store, &requests).await;
            assert_all_right(&requests, &answers, &what);

            let seen = front.seen();
            assert_eq!(seen.len(), 2, "{what}: one bundle and one retry");
            assert_eq!(server.stats().bundles() - before, 2, "{what}");
            // Duplicates are asked for once, in the first bundle and in the retry.
            assert_eq!(sorted(&seen[0].keys), all_keys(), "{what}");
            assert_eq!(seen[0].passed.len(), 3, "{what}: members before the cut");
            let retried = sorted(&seen[1].keys);
            assert_eq!(
                retried,
                undelivered(&seen[0]),
                "{what}: only the undelivered keys"
            );
            assert_eq!(retried.len(), OBJECTS - 3, "{what}");
        }

        // A compressed body cut halfway: the cut reaches the reader through the decoder.
        let compression = match protocol {
            BundleProtocol::Tigris => BundleCompression::Zstd,
            BundleProtocol::AiStore => BundleCompression::Gzip,
        };
        let what = format!("{protocol:?}, {compression:?}");
        let front = FrontServer::start(&server, vec![Act::Cut(At::Half)], Act::Pass).await;
        let store = client(&front, protocol)
            .compression(compression)
            .build()
            .unwrap();
        let answers = answers_of(&store, &requests).await;
        assert_all_right(&requests, &answers, &what);
        let seen = front.seen();
        assert_eq!(seen.len(), 2, "{what}");
        let retried = sorted(&seen[1].keys);
        assert!(
            !retried.is_empty() && retried.is_subset(&all_keys()),
            "{what}: {retried:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_between_members_is_retried() {
    let faults = FaultInjector::new();
    let server = server(&faults).await;
    let requests = requests();
    for protocol in PROTOCOLS {
        // The connection breaks at a member boundary, or the body ends cleanly there without
        // the archive's end-of-archive blocks: both are cuts.
        for act in [Act::Cut(At::After(4)), Act::End(At::After(4))] {
            let what = format!("{protocol:?}, {act:?}");
            let front = FrontServer::start(&server, vec![act], Act::Pass).await;
            let store = client(&front, protocol).build().unwrap();
            let answers = answers_of(&store, &requests).await;
            assert_all_right(&requests, &answers, &what);

            let seen = front.seen();
            assert_eq!(seen.len(), 2, "{what}");
            assert_eq!(seen[0].passed.len(), 5, "{what}");
            let retried = sorted(&seen[1].keys);
            assert_eq!(retried, undelivered(&seen[0]), "{what}");
            assert_eq!(retried.len(), OBJECTS - 5, "{what}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_is_retried_whole() {
    let faults = FaultInjector::new();
    let server = server(&faults).await;
    let requests = requests();
    for protocol in PROTOCOLS {
        let front = FrontServer::start(&server, vec![Act::Status(503, None)], Act::Pass).await;
        let store = client(&front, protocol).build().unwrap();
        let answers = answers_of(&store, &requests).await;
        assert_all_right(&requests, &answers, &format!("{protocol:?}"));
        let seen = front.seen();
        assert_eq!(seen.len(), 2, "{protocol:?}");
        assert_eq!(sorted(&seen[0].keys), all_keys());
        assert_eq!(sorted(&seen[1].keys), all_keys());
    }
}

/// `time` as an IMF-fixdate, `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(time: SystemTime) -> String {
    let seconds = time.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let (days, rest) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    // H. Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[test]
fn http_date_formats_the_rfc_example() {
    let time = UNIX_EPOCH + Duration::from_secs(784_111_777);
    assert_eq!(http_date(time), "Sun, 06 Nov 1994 08:49:37 GMT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_is_retried_after_its_retry_after() {
    let faults = FaultInjector::new();
    let server = server(&faults).await;
    let requests = requests();
    for protocol in PROTOCOLS {
        // Delay-seconds, and an HTTP-date 2 s ahead (in whole seconds: at least 1 s after
        // the moment the front answers).
        for (retry_after, form) in [
            (RetryAfter::Seconds(1), "seconds"),
            (RetryAfter::DateIn(2), "HTTP-date"),
        ] {
            let what = format!("{protocol:?}, Retry-After as {form}");
            let front = FrontServer::start(
                &server,
                vec![Act::Status(429, Some(retry_after))],
                Act::Pass,
            )
            .await;
            let store = client(&front, protocol).build().unwrap();
            let answers = answers_of(&store, &requests).await;
            assert_all_right(&requests, &answers, &what);
            let seen = front.seen();
            assert_eq!(seen.len(), 2, "{what}");
            assert_eq!(sorted(&seen[1].keys), all_keys(), "{what}");
            let gap = seen[1].at - seen[0].at;
            assert!(
                gap >= Duration::from_secs(1),
                "{what}: the retry came {gap:?} after the 429"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_fault_stops_at_the_retry_bound() {
    let faults = FaultInjector::new();
    let server = server(&faults).await;
    let requests = requests();
    for protocol in PROTOCOLS {
        // Every retry is cut before its first member is whole.
        let what = format!("{protocol:?}, cut every time");
        let front =
            FrontServer::start(&server, vec![Act::Cut(At::Mid(2))], Act::Cut(At::Mid(0))).await;
        let store = client(&front, protocol).retries(3).build().unwrap();
        let answers = answers_of(&store, &requests).await;
        let seen = front.seen();
        assert_eq!(seen.len(), 1 + 3, "{what}: the first request and 3 retries");
        let delivered: BTreeSet<String> = seen[0].passed.iter().cloned().collect();
        assert_eq!(delivered.len(), 2, "{what}");
        for retry in &seen[1..] {
            assert_eq!(sorted(&retry.keys), undelivered(&seen[0]), "{what}");
        }
        for (index, request) in requests.iter().enumerate() {
            match &answers[&index] {
                Ok(Some(bytes)) if delivered.contains(&request.key) => {
                    assert_eq!(*bytes, content(object_of(request)), "{what}: {index}")
                }
                Err(error) if !delivered.contains(&request.key) => {
                    let message = error.to_string();
                    assert!(
                        message.contains("the bundle stream was cut after 0 of 8 members")
                            && message.contains("gave up after 3 retries")
                            && message.contains("2 of 10 entries delivered"),
                        "{what}: {index}: {message}"
                    );
                }
                other => panic!("{what}: request {index} ({request}): {other:?}"),
            }
        }

        // An endpoint that answers 503 every time: nothing delivered.
        let what = format!("{protocol:?}, 503 every time");
        let front = FrontServer::start(&server, vec![], Act::Status(503, None)).await;
        let store = client(&front, protocol).retries(2).build().unwrap();
        let answers = answers_of(&store, &requests).await;
        assert_eq!(front.seen().len(), 1 + 2, "{what}");
        for (index, result) in answers {
            let message = result.expect_err("no answer").to_string();
            assert!(
                message.contains("503") && message.contains("gave up after 2 retries"),
                "{what}: {index}: {message}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_that_are_not_transient_are_not_retried() {
    let faults = FaultInjector::new();
    let server = server(&faults).await;
    let requests = requests();
    for protocol in PROTOCOLS {
        // A status that is not transient, and a pause longer than the store waits.
        for (status, retry_after, expect) in [
            (403, None, "403"),
            (429, Some(RetryAfter::Seconds(3600)), "Retry-After"),
        ] {
            let what = format!("{protocol:?}, {status}");
            let front =
                FrontServer::start(&server, vec![Act::Status(status, retry_after)], Act::Pass)
                    .await;
            let store = client(&front, protocol).build().unwrap();
            let answers = answers_of(&store, &requests).await;
            assert_eq!(front.seen().len(), 1, "{what}: not retried");
            for (index, result) in answers {
                let message = result.expect_err("no answer").to_string();
                assert!(message.contains(expect), "{what}: {index}: {message}");
            }
        }

        // A malformed archive: a header's checksum no longer matches.
        let what = format!("{protocol:?}, corrupt header");
        let front = FrontServer::start(&server, vec![Act::Corrupt(2)], Act::Pass).await;
        let store = client(&front, protocol).build().unwrap();
        let answers = answers_of(&store, &requests).await;
        let seen = front.seen();
        assert_eq!(seen.len(), 1, "{what}: not retried");
        let members_before: BTreeSet<String> = seen[0].passed.iter().cloned().collect();
        assert_eq!(members_before.len(), 2, "{what}");
        for (index, request) in requests.iter().enumerate() {
            match &answers[&index] {
                Ok(Some(bytes)) if members_before.contains(&request.key) => {
                    assert_eq!(*bytes, content(object_of(request)), "{what}: {index}")
                }
                Err(error) if !members_before.contains(&request.key) => {
                    let message = error.to_string();
                    assert!(
                        message.contains("not a valid archive") && message.contains("checksum"),
                        "{what}: {index}: {message}"
                    );
                }
                other => panic!("{what}: request {index} ({request}): {other:?}"),
            }
        }

        // An object the server marks failed (a skipped entry, an `__404__/` placeholder).
        let what = format!("{protocol:?}, an object failed on the server");
        faults.fail_mid_body("o/7");
        let front = FrontServer::start(&server, vec![], Act::Pass).await;
        let store = client(&front, protocol).build().unwrap();
        let answers = answers_of(&store, &requests).await;
        faults.clear();
        assert_eq!(front.seen().len(), 1, "{what}: not retried");
        for (index, request) in requests.iter().enumerate() {
            match &answers[&index] {
                Err(error) if request.key == "o/7" => {
                    let message = error.to_string();
                    assert!(
                        message.contains("failed in the server's backend"),
                        "{what}: {message}"
                    );
                }
                Ok(Some(bytes)) => {
                    assert_eq!(*bytes, content(object_of(request)), "{what}: {index}")
                }
                other => panic!("{what}: request {index} ({request}): {other:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_retried_after_the_stall_timeout() {
    let faults = FaultInjector::new();
    let server = server(&faults).await;
    let requests = requests();
    for protocol in PROTOCOLS {
        // The body stops after 3 members, the connection stays open.
        let what = format!("{protocol:?}, stalled body");
        let front = FrontServer::start(&server, vec![Act::Stall(At::After(2))], Act::Pass).await;
        let store = client(&front, protocol)
            .stall_timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let answers = answers_of(&store, &requests).await;
        assert_all_right(&requests, &answers, &what);
        let seen = front.seen();
        assert_eq!(seen.len(), 2, "{what}");
        assert_eq!(seen[0].passed.len(), 3, "{what}");
        assert_eq!(sorted(&seen[1].keys), undelivered(&seen[0]), "{what}");

        // No response head at all.
        let what = format!("{protocol:?}, no response head");
        let front = FrontServer::start(&server, vec![Act::NoHead], Act::Pass).await;
        let store = client(&front, protocol)
            .stall_timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let answers = answers_of(&store, &requests).await;
        assert_all_right(&requests, &answers, &what);
        let seen = front.seen();
        assert_eq!(seen.len(), 2, "{what}");
        assert_eq!(sorted(&seen[1].keys), all_keys(), "{what}");

        // The request's own time limit covers the body: a stalled body is cut by it too
        // (the stall timeout is far away), and the rest retried.
        let what = format!("{protocol:?}, body past the request timeout");
        let front = FrontServer::start(&server, vec![Act::Stall(At::After(2))], Act::Pass).await;
        let store = client(&front, protocol)
            .stall_timeout(Duration::from_secs(600))
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let answers = answers_of(&store, &requests).await;
        assert_all_right(&requests, &answers, &what);
        let seen = front.seen();
        assert_eq!(seen.len(), 2, "{what}");
        assert_eq!(sorted(&seen[1].keys), undelivered(&seen[0]), "{what}");
    }
}
