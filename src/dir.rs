//! [`DirStore`]: a local directory as a store that never reads outside its root (feature
//! `dir`).

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

type Queue = Mutex<std::iter::Enumerate<std::vec::IntoIter<Request>>>;

fn lock(
    queue: &Queue,
) -> std::sync::MutexGuard<'_, std::iter::Enumerate<std::vec::IntoIter<Request>>> {
    queue.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reads requests from `queue` until the batch holds [`BATCH_BYTES`] or [`BATCH_FILES`].
fn read_batch(root: &Dir, queue: &Queue) -> Vec<GetManyItem> {
    let mut answers = Vec::new();
    let mut bytes = 0u64;
    while answers.len() < BATCH_FILES && bytes < BATCH_BYTES {
        let Some((index, request)) = lock(queue).next() else {
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
    answers
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
        let queue = Arc::new(Mutex::new(requests.into_iter().enumerate()));
        let root = self.root.clone();
        let budget = self.budget.clone();
        // One batch future per poll while requests are left; a batch that finds the queue
        // already drained by the others answers nothing.
        let batches = stream::unfold(queue, move |queue| {
            let left = lock(&queue).len();
            let batch = (left > 0).then(|| {
                let (queue_for_batch, root, budget) = (queue.clone(), root.clone(), budget.clone());
                async move {
                    // The blocking task starts inside the budget, not before it.
                    let work = async move {
                        tokio::task::spawn_blocking(move || read_batch(&root, &queue_for_batch))
                            .await
                    };
                    // read_batch catches a panic per read; a join error is a runtime
                    // shutting down, when there is no one left to answer.
                    budget.run(work).await.unwrap_or_default()
                }
            });
            futures::future::ready(batch.map(|b| (b, queue)))
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
