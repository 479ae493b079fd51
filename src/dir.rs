//! [`DirStore`]: a local directory as a store that never reads outside its root (feature
//! `dir`).

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;
use cap_std::fs::Dir;
use futures::stream::{self, StreamExt};
use tokio::sync::Notify;

use crate::store::{GetManyItem, GetManyStream, ObjectMeta};
use crate::{ByteRange, Error, IoBudget, Request, Result, Store};

const STORE: &str = "DirStore";

/// A `get_many` batch ends once it has read this many bytes...
pub const BATCH_BYTES: u64 = 1 << 20;
/// ...or this many files.
pub const BATCH_FILES: usize = 64;

/// A local directory as a [`Store`]: the key `a/b` is the file `ROOT/a/b`.
///
/// **Confined to its root.** Every path is resolved beneath the root directory by
/// [`cap_std`] (`openat2` with `RESOLVE_BENEATH` on Linux, or an equivalent component-by-
/// component walk): a symbolic link that points outside the root, absolute or relative, file
/// or directory, is refused with [`Error::InvalidKey`], with no race between a check and the
/// open. Links that stay inside the root are followed. Keys with empty, `.` or `..` segments
/// are refused too. Errors never carry a path of the disk, only the key.
///
/// Reads run on tokio's blocking pool; a range is clipped to the file's real size before
/// any buffer is allocated, so a request can never make the store allocate more than the
/// file holds. Directories and missing files read as `Ok(None)`.
///
/// `get_many` reads in batches: one blocking task reads files one after another until it
/// holds [`BATCH_BYTES`] or [`BATCH_FILES`] of them, then hands them over, so small files
/// cost a blocking-pool hop per batch instead of per file. Up to the budget's limit of batches
/// run at once, on a task of their own (reads finish and free their permits while the
/// consumer is paused); dropping the stream stops them at the end of their batch.
///
/// ```
/// use getmany::{DirStore, Store};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let root = tempfile::tempdir()?;
/// std::fs::create_dir(root.path().join("a"))?;
/// std::fs::write(root.path().join("a/b"), "hello")?;
/// std::os::unix::fs::symlink("/etc/hostname", root.path().join("escape"))?;
///
/// let store = DirStore::open(root.path())?;
/// assert_eq!(store.get("a/b", None).await?.unwrap(), "hello");
/// assert_eq!(store.get("a/missing", None).await?, None);
/// assert!(store.get("escape", None).await.is_err());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct DirStore {
    root: Arc<Dir>,
    path: PathBuf,
    budget: IoBudget,
}

impl fmt::Debug for DirStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl DirStore {
    /// Opens the directory `path` as a store, with the default budget.
    ///
    /// # Errors
    ///
    /// `path` cannot be opened as a directory.
    pub fn open(path: impl AsRef<Path>) -> io::Result<DirStore> {
        let path = path.as_ref().to_path_buf();
        let root = Dir::open_ambient_dir(&path, cap_std::ambient_authority())?;
        Ok(DirStore {
            root: Arc::new(root),
            path,
            budget: IoBudget::default(),
        })
    }

    /// The same store with a budget of `limit` reads in flight.
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.budget = IoBudget::new(limit);
        self
    }

    /// The directory this store reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn blocking<T: Send + 'static>(
        &self,
        key: &str,
        work: impl FnOnce(&Dir) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        check_key(key)?;
        let root = self.root.clone();
        self.budget
            .run(async move { tokio::task::spawn_blocking(move || work(&root)).await })
            .await
            .map_err(|e| Error::backend(STORE, key, e))?
    }
}

/// The requests of one `get_many` call that no batch has taken yet, and how many batches
/// are running.
struct Pending {
    queue: VecDeque<(usize, Request)>,
    running: usize,
}

/// What the batches of one `get_many` call share.
struct Batches {
    pending: Mutex<Pending>,
    /// Notified each time a batch ends (its unread requests back in the queue first).
    ended: Notify,
}

impl Batches {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next batch's requests (up to [`BATCH_FILES`]), or `None` once every request has
    /// been read. Waits while the queue is empty but batches still run: one that stops at
    /// [`BATCH_BYTES`] puts the requests it did not read back.
    async fn take(&self) -> Option<Vec<(usize, Request)>> {
        loop {
            let ended = self.ended.notified();
            {
                let mut pending = self.lock();
                if !pending.queue.is_empty() {
                    let n = pending.queue.len().min(BATCH_FILES);
                    pending.running += 1;
                    return Some(pending.queue.drain(..n).collect());
                }
                if pending.running == 0 {
                    return None;
                }
            }
            ended.await;
        }
    }

    /// A batch has ended; `unread` go back to the front of the queue, in order.
    fn end(&self, unread: Vec<(usize, Request)>) {
        {
            let mut pending = self.lock();
            for request in unread.into_iter().rev() {
                pending.queue.push_front(request);
            }
            pending.running -= 1;
        }
        // notify_one keeps a permit if the call is not waiting yet, so no end is missed.
        self.ended.notify_one();
    }
}

/// Reads `requests` one after another until the batch holds [`BATCH_BYTES`]; returns the
/// answers and the requests left unread.
fn read_batch(
    root: &Dir,
    requests: Vec<(usize, Request)>,
) -> (Vec<GetManyItem>, Vec<(usize, Request)>) {
    let mut answers = Vec::with_capacity(requests.len());
    let mut bytes = 0u64;
    let mut requests = requests.into_iter();
    while bytes < BATCH_BYTES {
        let Some((index, request)) = requests.next() else {
            break;
        };
        let answer = std::panic::catch_unwind(AssertUnwindSafe(|| {
            read_one(root, &request.key, request.range.clone())
        }))
        .unwrap_or_else(|_| {
            Err(Error::backend(
                STORE,
                request.key.as_str(),
                io::Error::other("the read panicked"),
            ))
        });
        if let Ok(Some(data)) = &answer {
            bytes += data.len() as u64;
        }
        answers.push((index, answer));
    }
    (answers, requests.collect())
}

/// One read on the blocking pool: the bytes and what the file said about itself.
fn read_one(root: &Dir, key: &str, range: Option<ByteRange>) -> Result<Option<Bytes>> {
    check_key(key)?;
    check_range(key, range.as_ref())?;
    let Some((file, meta)) = open(root, key)? else {
        return Ok(None);
    };
    read_range(key, &file, meta.len(), range).map(Some)
}

/// Refuses keys that are not plain relative paths.
fn check_key(key: &str) -> Result<()> {
    let reason = if key.is_empty() {
        Some("it is empty")
    } else if key.starts_with('/') {
        Some("it starts with '/'")
    } else if key.contains('\0') {
        Some("it contains a NUL byte")
    } else if key
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        Some("it has an empty, '.' or '..' segment")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidKey {
            key: key.to_owned(),
            reason: reason.to_owned(),
        }),
        None => Ok(()),
    }
}

/// An open regular file, or `None` for a missing key or a directory.
fn open(root: &Dir, key: &str) -> Result<Option<(std::fs::File, std::fs::Metadata)>> {
    let file = match root.open(key) {
        Ok(file) => file.into_std(),
        Err(e) => return not_found_or(key, e),
    };
    let meta = file.metadata().map_err(|e| Error::backend(STORE, key, e))?;
    if !meta.is_file() {
        return Ok(None);
    }
    Ok(Some((file, meta)))
}

fn not_found_or<T>(key: &str, e: io::Error) -> Result<Option<T>> {
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory | io::ErrorKind::IsADirectory => {
            Ok(None)
        }
        // cap-std's answer to a path that leads outside the root (a symbolic link).
        io::ErrorKind::PermissionDenied => Err(Error::InvalidKey {
            key: key.to_owned(),
            reason: "it leads outside the store's root (through a symbolic link) or may not be \
                     read"
                .to_owned(),
        }),
        _ => Err(Error::backend(STORE, key, e)),
    }
}

/// Refuses a range no object can satisfy, before the key is looked up: such a range is an
/// error even for a missing key.
fn check_range(key: &str, range: Option<&ByteRange>) -> Result<()> {
    match range.and_then(|r| r.invalid_reason().map(|why| (r, why))) {
        Some((range, reason)) => Err(Error::InvalidRange {
            key: key.to_owned(),
            range: range.clone(),
            reason: reason.to_owned(),
        }),
        None => Ok(()),
    }
}

/// Reads `range` of `file` (of `size` bytes), clipped to the file first.
fn read_range(
    key: &str,
    file: &std::fs::File,
    size: u64,
    range: Option<ByteRange>,
) -> Result<Bytes> {
    let span = match range {
        None => 0..size,
        Some(range) => {
            if let Some(reason) = range.invalid_reason() {
                return Err(Error::InvalidRange {
                    key: key.to_owned(),
                    range,
                    reason: reason.to_owned(),
                });
            }
            match range.resolve(size) {
                Some(span) => span,
                None => return Err(Error::range_past_end(key, range, size)),
            }
        }
    };
    let len = usize::try_from(span.end - span.start).map_err(|e| Error::backend(STORE, key, e))?;
    let mut buf = vec![0; len];
    file.read_exact_at(&mut buf, span.start)
        .map_err(|e| Error::backend(STORE, key, e))?;
    Ok(Bytes::from(buf))
}

/// A version tag that changes when the file is rewritten: inode, size and modification time.
fn version(meta: &std::fs::Metadata) -> String {
    format!(
        "{:x}-{:x}-{:x}.{:x}",
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec()
    )
}

#[async_trait]
impl Store for DirStore {
    async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<Option<Bytes>> {
        Ok(self
            .get_with_meta(key, range)
            .await?
            .map(|(bytes, _)| bytes))
    }

    async fn get_with_meta(
        &self,
        key: &str,
        range: Option<ByteRange>,
    ) -> Result<Option<(Bytes, ObjectMeta)>> {
        let owned = key.to_owned();
        check_range(key, range.as_ref())?;
        self.blocking(key, move |root| {
            let Some((file, meta)) = open(root, &owned)? else {
                return Ok(None);
            };
            let bytes = read_range(&owned, &file, meta.len(), range)?;
            let meta = ObjectMeta {
                size: Some(meta.len()),
                version: Some(version(&meta)),
            };
            Ok(Some((bytes, meta)))
        })
        .await
    }

    fn get_many(&self, requests: Vec<Request>) -> GetManyStream<'_> {
        if requests.is_empty() {
            return stream::empty().boxed();
        }
        let limit = self.budget.limit();
        let shared = Arc::new(Batches {
            pending: Mutex::new(Pending {
                queue: requests.into_iter().enumerate().collect(),
                running: 0,
            }),
            ended: Notify::new(),
        });
        let root = self.root.clone();
        let budget = self.budget.clone();
        // Each batch takes its requests when it is made, so a call makes as many batches as
        // its requests need, no more (a batch that found the queue drained by others cost a
        // budget permit and a blocking-pool hop for nothing).
        let batches = stream::unfold(shared, move |shared| {
            let (root, budget) = (root.clone(), budget.clone());
            async move {
                let requests = shared.take().await?;
                let ended = shared.clone();
                let batch = async move {
                    // The blocking task starts inside the budget, not before it.
                    let work = async move {
                        tokio::task::spawn_blocking(move || read_batch(&root, requests)).await
                    };
                    // read_batch catches a panic per read; a join error is a runtime
                    // shutting down, when there is no one left to answer.
                    let (answers, unread) = budget.run(work).await.unwrap_or_default();
                    ended.end(unread);
                    answers
                };
                Some((batch, shared))
            }
        });
        crate::task::drive(batches, limit)
    }

    async fn size(&self, key: &str) -> Result<Option<u64>> {
        let owned = key.to_owned();
        self.blocking(key, move |root| {
            Ok(open(root, &owned)?.map(|(_, meta)| meta.len()))
        })
        .await
    }

    fn io_budget(&self) -> &IoBudget {
        &self.budget
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Batches that stop at BATCH_BYTES put their unread requests back: with files of
    /// 300 KiB a batch reads 4 of them, so most requests go back at least once; small files
    /// fill batches of BATCH_FILES. Every index is answered once, with its own file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_request_is_answered_once_when_batches_stop_at_their_byte_limit() {
        let root = tempfile::tempdir().unwrap();
        let sizes: Vec<usize> = (0..300)
            .map(|i| if i % 3 == 0 { 300 << 10 } else { 100 + i })
            .collect();
        for (i, size) in sizes.iter().enumerate() {
            std::fs::write(
                root.path().join(format!("f{i}")),
                vec![(i % 251) as u8; *size],
            )
            .unwrap();
        }
        for limit in [1, 3, 64] {
            let store = DirStore::open(root.path()).unwrap().with_limit(limit);
            let mut requests: Vec<Request> = (0..sizes.len())
                .map(|i| Request::whole(format!("f{i}")))
                .collect();
            requests.push(Request::whole("missing"));
            let mut seen = vec![false; requests.len()];
            let mut answers = store.get_many(requests);
            while let Some((index, answer)) = answers.next().await {
                assert!(!seen[index], "index {index} answered twice");
                seen[index] = true;
                match sizes.get(index) {
                    Some(&size) => {
                        let bytes = answer.unwrap().unwrap();
                        assert_eq!(bytes.len(), size, "index {index}");
                        assert!(bytes.iter().all(|&b| b == (index % 251) as u8));
                    }
                    None => assert_eq!(answer.unwrap(), None),
                }
            }
            assert!(
                seen.iter().all(|&s| s),
                "budget {limit}: some index never answered"
            );
        }
    }
}
