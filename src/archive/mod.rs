//! [`ArchiveStore`]: tar and zip archives used as shards, every member addressable as a key
//! and read with byte ranges of the archive object through any inner [`Store`].
//!
//! * [`index`]: the archive index (member path -> offset, sizes, compression, CRC) and its
//!   persisted sidecar form.
//! * [`tar`]: the tar header walker (ustar, GNU, PAX), fed byte windows, no I/O of its own.
//! * [`zip`]: the zip end records and central directory parser (zip64 included), local
//!   header parsing and member decoding (stored, deflate).
//!
//! The parsers work over byte buffers so they can be fuzzed (see `fuzz/` in the
//! repository) and reused; `ArchiveStore` drives them with reads of its inner store.

pub mod index;
pub mod tar;
pub mod zip;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};
use tokio::sync::OnceCell;

use crate::store::{GetManyItem, GetManyStream, ObjectMeta, WritableStore, slice_object};
use crate::{ByteRange, Error, IoBudget, Request, Result, Store};

pub use index::{ArchiveIndex, ArchiveKind, ArchiveLimits, Compression, Member};

/// How an [`ArchiveStore`] finds archives, reads them and caches their indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveConfig {
    /// Key suffixes that mark a path segment as an archive, with the archive's format.
    /// Default: `.tar` (tar), `.zip` (zip), `.tar.gz` and `.tgz` (gzip-compressed tar). The
    /// longest suffix that matches wins.
    pub suffixes: Vec<(String, ArchiveKind)>,
    /// Caps on what an archive can make the reader allocate.
    pub limits: ArchiveLimits,
    /// The first read of a tar archive, and the read size after a skip, while indexing.
    /// Default 64 KiB.
    pub tar_read_ahead: u64,
    /// Reads while indexing a run of small tar members double up to this size. Default 8 MiB.
    pub tar_max_read_ahead: u64,
    /// The suffix read that finds a zip's end records (and often its whole central
    /// directory). Default 64 KiB.
    pub zip_tail_read: u64,
    /// Extra bytes read after a zip member's data, in case its local header's extra field
    /// is longer than the central directory's (the local header is parsed from the same
    /// read as the data). When even that is short, one more read fetches the rest.
    /// Default 1 KiB.
    pub zip_header_slack: u64,
    /// Whether to look for a sidecar index beside each archive before scanning it.
    /// Default true.
    pub read_sidecars: bool,
    /// The sidecar of archive `a` is the object `a` + this suffix. Default `.gmindex.json`.
    pub sidecar_suffix: String,
    /// The index cache holds at most this many members in total (about 100 bytes plus the
    /// name each); the least recently used archives are dropped beyond it. Default 4,000,000.
    pub max_cached_members: usize,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            suffixes: vec![
                (".tar".into(), ArchiveKind::Tar),
                (".zip".into(), ArchiveKind::Zip),
                (".tar.gz".into(), ArchiveKind::TarGz),
                (".tgz".into(), ArchiveKind::TarGz),
            ],
            limits: ArchiveLimits::default(),
            tar_read_ahead: 64 << 10,
            tar_max_read_ahead: 8 << 20,
            zip_tail_read: 64 << 10,
            zip_header_slack: 1 << 10,
            read_sidecars: true,
            sidecar_suffix: ".gmindex.json".into(),
            max_cached_members: 4_000_000,
        }
    }
}

impl ArchiveConfig {
    /// The format of an archive named `key`, by the longest matching suffix.
    pub fn kind_of(&self, key: &str) -> Option<ArchiveKind> {
        self.suffixes
            .iter()
            .filter(|(suffix, _)| key.ends_with(suffix.as_str()))
            .max_by_key(|(suffix, _)| suffix.len())
            .map(|(_, kind)| *kind)
    }
}

/// Writes a sidecar through a writable inner store (set by
/// [`ArchiveStore::with_sidecar_writes`]).
type SidecarWriter<S> = for<'a> fn(&'a S, &'a str, Bytes) -> BoxFuture<'a, Result<()>>;

fn write_sidecar<'a, S: WritableStore>(
    store: &'a S,
    key: &'a str,
    bytes: Bytes,
) -> BoxFuture<'a, Result<()>> {
    store.set(key, bytes)
}

/// A [`Store`] that reads the members of tar and zip archives as keys, with byte ranges of
/// the archive objects of any inner store.
///
/// # Keys
///
/// `<archive key>/<member path>`, for example `shards/000123.tar/cat/0001.jpg`: the archive
/// is the first path segment ending in one of [`ArchiveConfig::suffixes`] (`.tar`, `.zip`,
/// `.tar.gz`, `.tgz` by default). Keys with no such segment, and the archive keys
/// themselves, go straight to the inner store. [`ArchiveStore::bound`] makes a store bound
/// to one archive, whose keys are member paths. Member paths are taken verbatim, `..` and
/// leading `/` included: they are only keys (see [`ArchiveIndex`] for duplicates).
///
/// # Reads
///
/// `get_many` looks up (or builds) the index of every archive the batch touches, turns each
/// member request into one byte-range request of its archive (two for a range inside a
/// stored zip member), and sends all of them, with
/// the pass-through requests, as ONE [`get_many`](Store::get_many) of the inner store, so
/// an inner store that merges ranges (an [`ObjectStoreStore`](crate)) reads neighbouring
/// members with one GET. Each member is yielded as soon as its read returns:
///
/// * tar members: a range inside the member is a range of the archive; only those bytes
///   are read;
/// * zip members are read from their local header, which is parsed from the same read as
///   the data (never a sequential request per member). A range inside a stored member that
///   does not start at 0 is read as two ranges of the same batch, the local header and the
///   range (widened by the possible length of the local extra field), which the inner store
///   merges into one read when they are near;
/// * deflated zip members: the compressed bytes are read, inflated (never past the declared
///   size, nor [`ArchiveLimits::max_member_size`]) and sliced; a whole read checks the
///   CRC-32;
/// * `.tar.gz`/`.tgz`: gzip has no random access. Every batch that touches one reads the
///   whole object once and inflates it as a stream, keeping only the members asked for
///   (memory: the compressed object and those members). Nothing is cached: for repeated
///   reads, store shards as plain `.tar` or `.zip`.
///
/// A missing archive or member reads as `None`; a damaged archive fails only the members
/// it must (see [`ArchiveIndex`]).
///
/// Copies: tar members and stored zip members are slices of the inner store's buffers; a
/// deflated member is inflated into one new buffer.
///
/// # Index cost and cache
///
/// * zip: a suffix read of [`ArchiveConfig::zip_tail_read`] bytes finds the end records and
///   usually the central directory; a second read fetches a larger central directory.
///   At most two reads.
/// * tar: the headers are walked with reads of the archive, skipping member data. A read
///   starts at [`ArchiveConfig::tar_read_ahead`] (64 KiB) and doubles, up to
///   [`ArchiveConfig::tar_max_read_ahead`] (8 MiB), while the data skipped between headers
///   is shorter than the read: an archive of N members of size s costs about one read of
///   64 KiB per member when s is large (N reads, N x 64 KiB), and about
///   `log2(8 MiB / 64 KiB) + size / 8 MiB` reads of the whole archive when members are
///   small. The reads are sequential, one round trip each: persist the index in a sidecar.
/// * sidecar: `<archive>.gmindex.json`, read in parallel with the archive's first read
///   and used when it records the archive's current size and version (ETag or object
///   version, as [`Store::get_with_meta`] reports them; size alone on stores that report no
///   version). A stale or corrupt sidecar is ignored and the archive rescanned. Sidecars
///   are written only by a store made with [`ArchiveStore::with_sidecar_writes`].
///
/// Indexes are cached in memory, at most [`ArchiveConfig::max_cached_members`] members in
/// total; concurrent calls share one index build. The cache is not revalidated: after an
/// archive is rewritten, call [`ArchiveStore::invalidate`] (a zip read that finds no local
/// header where the index says fails with an error saying so).
///
/// # Example
///
/// ```
/// use futures::StreamExt;
/// use getmany::archive::ArchiveStore;
/// use getmany::{MemoryStore, Request, Store};
///
/// # fn tar_with(name: &str, data: &[u8]) -> Vec<u8> {
/// #     let mut h = [0u8; 512];
/// #     h[..name.len()].copy_from_slice(name.as_bytes());
/// #     h[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
/// #     h[156] = b'0';
/// #     h[148..156].copy_from_slice(b"        ");
/// #     let sum: u32 = h.iter().map(|&b| b as u32).sum();
/// #     h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
/// #     let mut out = h.to_vec();
/// #     out.extend_from_slice(data);
/// #     out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
/// #     out
/// # }
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> getmany::Result<()> {
/// let inner = MemoryStore::new();
/// inner.insert("shards/0001.tar", tar_with("cat/0001.jpg", b"not really a jpeg"));
/// inner.insert("README", "plain object");
/// let store = ArchiveStore::new(inner);
///
/// let requests = vec![
///     Request::whole("shards/0001.tar/cat/0001.jpg"),
///     Request::range("shards/0001.tar/cat/0001.jpg", 4..10),
///     Request::whole("shards/0001.tar/cat/missing.jpg"),
///     Request::whole("README"),
/// ];
/// let mut results = store.get_many(requests);
/// while let Some((index, result)) = results.next().await {
///     println!("request {index}: {:?}", result?);
/// }
/// assert_eq!(store.get("shards/0001.tar/cat/0001.jpg", Some((4..10).into())).await?.unwrap(), "really");
/// # Ok(()) }
/// ```
pub struct ArchiveStore<S> {
    inner: S,
    config: ArchiveConfig,
    bound: Option<(String, ArchiveKind)>,
    cache: IndexCache,
    sidecar_writer: Option<SidecarWriter<S>>,
}

impl<S: fmt::Debug> fmt::Debug for ArchiveStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArchiveStore")
            .field("inner", &self.inner)
            .field("bound", &self.bound)
            .field("config", &self.config)
            .field("writes_sidecars", &self.sidecar_writer.is_some())
            .finish()
    }
}

/// Where a key leads.
#[derive(Debug, Clone)]
enum Route {
    Inner,
    Member {
        archive: String,
        kind: ArchiveKind,
        path: String,
    },
}

impl<S: Store> ArchiveStore<S> {
    /// Reads archive members below `inner`'s archive keys, with the default configuration.
    pub fn new(inner: S) -> Self {
        Self::with_config(inner, ArchiveConfig::default())
    }

    /// Reads archive members below `inner`'s archive keys.
    pub fn with_config(inner: S, config: ArchiveConfig) -> Self {
        ArchiveStore {
            inner,
            config,
            bound: None,
            cache: IndexCache::default(),
            sidecar_writer: None,
        }
    }

    /// A store bound to the one archive `archive_key` of `inner`: every key is a member
    /// path. The format comes from the key's suffix; `kind` overrides it (required when the
    /// key has no known suffix).
    pub fn bound(inner: S, archive_key: &str, kind: Option<ArchiveKind>) -> Result<Self> {
        let config = ArchiveConfig::default();
        let kind = kind
            .or_else(|| config.kind_of(archive_key))
            .ok_or_else(|| Error::InvalidKey {
                key: archive_key.to_string(),
                reason: "the archive format is not known from its suffix; pass a kind".into(),
            })?;
        let mut store = Self::with_config(inner, config);
        store.bound = Some((archive_key.to_string(), kind));
        Ok(store)
    }

    /// Replaces the configuration (keeps the binding, if any; clears the index cache).
    pub fn config_mut(&mut self) -> &mut ArchiveConfig {
        self.cache.clear();
        &mut self.config
    }

    /// The configuration.
    pub fn config(&self) -> &ArchiveConfig {
        &self.config
    }

    /// The inner store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Forgets the cached index of `archive_key` (after the archive was rewritten).
    pub fn invalidate(&self, archive_key: &str) {
        self.cache.remove(archive_key);
    }

    /// Forgets every cached index.
    pub fn clear_cache(&self) {
        self.cache.clear();
    }

    fn route(&self, key: &str) -> Route {
        if let Some((archive, kind)) = &self.bound {
            return Route::Member {
                archive: archive.clone(),
                kind: *kind,
                path: key.to_string(),
            };
        }
        for (i, _) in key.match_indices('/') {
            if let Some(kind) = self.config.kind_of(&key[..i]) {
                return Route::Member {
                    archive: key[..i].to_string(),
                    kind,
                    path: key[i + 1..].to_string(),
                };
            }
        }
        Route::Inner
    }

    /// The index of the archive at `archive_key` (a tar or zip), from the cache, a sidecar,
    /// or a scan of the archive. `None` if the archive does not exist.
    pub async fn index(&self, archive_key: &str) -> Result<Option<Arc<ArchiveIndex>>> {
        let kind = match &self.bound {
            Some((a, k)) if a == archive_key => Some(*k),
            _ => self.config.kind_of(archive_key),
        };
        match kind {
            Some(kind @ (ArchiveKind::Tar | ArchiveKind::Zip)) => {
                self.cached_index(archive_key, kind).await
            }
            Some(ArchiveKind::TarGz) => Err(Error::NotSupported {
                store: "archive",
                operation: format!(
                    "an index of {archive_key:?}: a gzip-compressed tar has no random access"
                ),
            }),
            None => Err(Error::InvalidKey {
                key: archive_key.to_string(),
                reason: "not an archive key (no known suffix)".into(),
            }),
        }
    }

    async fn cached_index(
        &self,
        archive: &str,
        kind: ArchiveKind,
    ) -> Result<Option<Arc<ArchiveIndex>>> {
        let cell = self.cache.cell(archive);
        let built = cell
            .get_or_try_init(|| async {
                match self.build_index(archive, kind).await {
                    Ok(Some(index)) => Ok(Arc::new(index)),
                    Ok(None) => Err(None),
                    Err(e) => Err(Some(e)),
                }
            })
            .await;
        match built {
            Ok(index) => {
                let index = index.clone();
                self.cache
                    .record(archive, index.len(), self.config.max_cached_members);
                Ok(Some(index))
            }
            Err(None) => {
                self.cache.forget_empty(archive);
                Ok(None)
            }
            Err(Some(e)) => {
                self.cache.forget_empty(archive);
                Err(e)
            }
        }
    }

    /// Builds the index of `archive` (a tar or zip), using a valid sidecar if there is one.
    async fn build_index(&self, archive: &str, kind: ArchiveKind) -> Result<Option<ArchiveIndex>> {
        let first_range = match kind {
            ArchiveKind::Zip => ByteRange::Suffix(self.config.zip_tail_read.max(1)),
            _ => ByteRange::Bounded(0..self.config.tar_read_ahead.max(512)),
        };
        let asked = first_range.requested_len().unwrap_or(u64::MAX);
        let sidecar_key = format!("{archive}{}", self.config.sidecar_suffix);
        let sidecar = async {
            if self.config.read_sidecars {
                self.inner.get(&sidecar_key, None).await
            } else {
                Ok(None)
            }
        };
        let first = self.inner.get_with_meta(archive, Some(first_range));
        let (sidecar, first) = futures::join!(sidecar, first);
        let Some((first, meta)) = first? else {
            return Ok(None);
        };
        let size = match meta.size {
            Some(size) => size,
            None if (first.len() as u64) < asked => first.len() as u64,
            None => match self.inner.size(archive).await? {
                Some(size) => size,
                None => return Ok(None),
            },
        };
        let version = meta.version;
        match sidecar {
            Ok(Some(bytes)) if bytes.len() as u64 <= self.config.limits.max_index_bytes => {
                match ArchiveIndex::from_sidecar(&bytes, kind) {
                    Ok(index) if index.matches(size, version.as_deref()) => {
                        return Ok(Some(index));
                    }
                    Ok(_) => tracing::debug!(archive, "stale sidecar index, rescanning"),
                    Err(why) => tracing::warn!(archive, why, "unusable sidecar index, rescanning"),
                }
            }
            Ok(Some(_)) => tracing::warn!(archive, "sidecar index over the size limit, rescanning"),
            Ok(None) => {}
            Err(e) => tracing::warn!(archive, error = %e, "sidecar index unreadable, rescanning"),
        }
        let index = match kind {
            ArchiveKind::Zip => self.build_zip(archive, first, size, version).await?,
            _ => self.build_tar(archive, first, size, version).await?,
        };
        let Some(index) = index else {
            return Ok(None);
        };
        if let Some(write) = self.sidecar_writer
            && let Err(e) = write(&self.inner, &sidecar_key, index.to_sidecar().into()).await
        {
            tracing::warn!(archive, error = %e, "could not write the sidecar index");
        }
        Ok(Some(index))
    }

    async fn build_zip(
        &self,
        archive: &str,
        tail: Bytes,
        size: u64,
        version: Option<String>,
    ) -> Result<Option<ArchiveIndex>> {
        let invalid = |reason: String| Error::InvalidData {
            key: archive.to_string(),
            reason,
        };
        let limits = &self.config.limits;
        let parsed = zip::parse_tail(&tail, size, limits).map_err(invalid)?;
        let tail_start = size - tail.len() as u64;
        let cd_range = parsed.cd_range();
        let cd = if cd_range.start >= tail_start {
            let start = (cd_range.start - tail_start) as usize;
            tail.slice(start..start + parsed.cd_size as usize)
        } else {
            if parsed.cd_size == 0 {
                Bytes::new()
            } else {
                let Some(cd) = self
                    .inner
                    .get(archive, Some(ByteRange::Bounded(cd_range.clone())))
                    .await?
                else {
                    return Ok(None);
                };
                if cd.len() as u64 != parsed.cd_size {
                    return Err(invalid(format!(
                        "the central directory at byte {} should have {} bytes, the read returned {}",
                        cd_range.start,
                        parsed.cd_size,
                        cd.len()
                    )));
                }
                cd
            }
        };
        let members = zip::parse_central_directory(&cd, &parsed, limits).map_err(invalid)?;
        Ok(Some(ArchiveIndex::new(
            ArchiveKind::Zip,
            size,
            version,
            members,
            None,
        )))
    }

    async fn build_tar(
        &self,
        archive: &str,
        first: Bytes,
        size: u64,
        version: Option<String>,
    ) -> Result<Option<ArchiveIndex>> {
        let mut scanner = tar::TarScanner::new(self.config.limits, Some(size));
        let mut window = first;
        let mut window_offset = 0u64;
        let base = self.config.tar_read_ahead.max(512);
        let mut read_len = base;
        loop {
            let window_end = window_offset + window.len() as u64;
            let at_end = window_end >= size;
            let tar::TarStep::Need { offset, len } = scanner.scan(window_offset, &window, at_end)
            else {
                break;
            };
            if offset >= size {
                break;
            }
            // Through a run of small members (the data skipped to reach the next header is
            // shorter than a read), read twice as much each time; after a longer skip, start
            // small again. Reading through is cheaper than another round trip while the
            // skipped bytes take less time to transfer than a round trip.
            read_len = if offset.saturating_sub(window_end) < read_len {
                (read_len * 2).min(self.config.tar_max_read_ahead.max(base))
            } else {
                base
            };
            let end = offset.saturating_add(len.max(read_len)).min(size);
            let Some(bytes) = self
                .inner
                .get(archive, Some(ByteRange::Bounded(offset..end)))
                .await?
            else {
                return Ok(None);
            };
            if bytes.is_empty() {
                break;
            }
            window = bytes;
            window_offset = offset;
        }
        Ok(Some(scanner.finish(size, version)))
    }

    /// The requests of the inner store that [`get_many`](Store::get_many) would send for
    /// `requests` (indexes are loaded, as `get_many` would): one per member read (two for a
    /// range inside a stored zip member: its local header and the range) and one per
    /// pass-through request, in request order. Requests answered without I/O (an empty
    /// member, a missing member, an invalid range, `.tar.gz` members) send none.
    pub async fn inner_requests(&self, requests: &[Request]) -> Vec<Request> {
        let plan = self.plan(requests.to_vec()).await;
        plan.inner.into_iter().map(|(r, _)| r).collect()
    }

    /// Loads the indexes `requests` need and decides how each is answered.
    async fn plan(&self, requests: Vec<Request>) -> BatchPlan {
        let routes: Vec<Route> = requests.iter().map(|r| self.route(&r.key)).collect();
        let mut archives: Vec<(String, ArchiveKind)> = Vec::new();
        let mut seen = HashSet::new();
        for route in &routes {
            if let Route::Member { archive, kind, .. } = route
                && *kind != ArchiveKind::TarGz
                && seen.insert(archive.clone())
            {
                archives.push((archive.clone(), *kind));
            }
        }
        let limit = self.inner.io_budget().limit();
        let indexes: HashMap<String, Result<Option<Arc<ArchiveIndex>>>> = stream::iter(archives)
            .map(|(archive, kind)| async move {
                let index = self.cached_index(&archive, kind).await;
                (archive, index)
            })
            .buffer_unordered(limit)
            .collect()
            .await;

        let mut plan = BatchPlan::default();
        for (i, (request, route)) in requests.into_iter().zip(routes).enumerate() {
            let Route::Member {
                archive,
                kind,
                path,
            } = route
            else {
                plan.inner.push((request, (i, Post::Pass)));
                continue;
            };
            if let Some(reason) = request.range.as_ref().and_then(ByteRange::invalid_reason) {
                let err = Error::InvalidRange {
                    key: request.key,
                    range: request.range.unwrap_or(ByteRange::Offset(0)),
                    reason: reason.to_string(),
                };
                plan.now.push((i, Err(err)));
                continue;
            }
            if kind == ArchiveKind::TarGz {
                plan.targz
                    .entry(archive)
                    .or_default()
                    .push((i, request, path));
                continue;
            }
            let index = match indexes.get(&archive) {
                Some(Ok(Some(index))) => index,
                Some(Ok(None)) => {
                    plan.now.push((i, Ok(None)));
                    continue;
                }
                Some(Err(e)) => {
                    plan.now.push((i, Err(for_member(e, &request.key))));
                    continue;
                }
                None => {
                    // Every archive was looked up above.
                    plan.now.push((i, Ok(None)));
                    continue;
                }
            };
            match self.member_read(&archive, index, &path, request) {
                Ok(MemberRead::Now(result)) => plan.now.push((i, result)),
                Ok(MemberRead::Read(inner, post)) => plan.inner.push((inner, (i, post))),
                Ok(MemberRead::Split(parts)) => {
                    for (inner, post) in parts {
                        plan.inner.push((inner, (i, post)));
                    }
                }
                Err(e) => plan.now.push((i, Err(e))),
            }
        }
        plan
    }

    /// How to answer one member request of an indexed archive.
    fn member_read(
        &self,
        archive: &str,
        index: &ArchiveIndex,
        path: &str,
        request: Request,
    ) -> Result<MemberRead> {
        let key = request.key;
        let invalid = |reason: String| Error::InvalidData {
            key: key.clone(),
            reason,
        };
        let Some(member) = index.get(path) else {
            return match &index.damage {
                Some(damage) => Err(invalid(format!(
                    "archive {archive:?} is damaged ({damage}); the member may have been lost"
                ))),
                None => Ok(MemberRead::Now(Ok(None))),
            };
        };
        let member = *member;
        let size = member.size;
        let wanted = match &request.range {
            None => 0..size,
            Some(range) => match range.resolve(size) {
                Some(r) => r,
                None => {
                    return Err(Error::range_past_end(&key, range.clone(), size));
                }
            },
        };
        match index.kind {
            ArchiveKind::Zip => {
                zip::check_member(path, &member, index.archive_size, &self.config.limits)
                    .map_err(invalid)?;
                if member.compression == Compression::Stored && wanted.start > 0 {
                    // A range inside a stored member: its local header and the range, as two
                    // ranges of one batch (the inner store merges them when they are near).
                    // The data range starts where the data would with no local extra field
                    // and ends where it would with the longest one expected, so it holds
                    // the wanted bytes whatever the header says within that bound.
                    let fixed = zip::LOCAL_LEN + member.name_len as u64;
                    let extra = member.extra_len as u64 + self.config.zip_header_slack;
                    let size = index.archive_size;
                    let header = member.offset..(member.offset + fixed + extra).min(size);
                    let data = member.offset + fixed + wanted.start
                        ..(member.offset + fixed + extra + wanted.end).min(size);
                    let split = Arc::new(ZipSplit {
                        key,
                        archive: archive.to_string(),
                        path: path.to_string(),
                        member,
                        wanted,
                        data_read_start: data.start,
                    });
                    return Ok(MemberRead::Split([
                        (
                            Request::range(archive, header),
                            Post::ZipHeader(split.clone()),
                        ),
                        (Request::range(archive, data), Post::ZipData(split)),
                    ]));
                }
                // Stored: read up to the end of the wanted bytes; deflate: all of it.
                let stored_end = match (member.compression, &request.range) {
                    (Compression::Stored, Some(_)) => Some(wanted.end),
                    _ => None,
                };
                let range = zip::read_range(
                    &member,
                    stored_end,
                    self.config.zip_header_slack,
                    index.archive_size,
                );
                let post = Post::Zip {
                    key,
                    archive: archive.to_string(),
                    path: path.to_string(),
                    member,
                    range: request.range,
                    stored_end: stored_end.unwrap_or(member.stored_size),
                };
                Ok(MemberRead::Read(Request::range(archive, range), post))
            }
            _ => {
                let end = member.offset.checked_add(member.stored_size);
                if end.is_none_or(|end| end > index.archive_size) {
                    return Err(invalid(format!(
                        "member {path:?} declares {} bytes at byte {}, past the end of archive {archive:?} ({} bytes)",
                        member.stored_size, member.offset, index.archive_size
                    )));
                }
                if wanted.is_empty() {
                    return Ok(MemberRead::Now(Ok(Some(Bytes::new()))));
                }
                let range = member.offset + wanted.start..member.offset + wanted.end;
                let post = Post::Tar {
                    key,
                    expected: wanted.end - wanted.start,
                };
                Ok(MemberRead::Read(Request::range(archive, range), post))
            }
        }
    }

    /// Turns the inner store's answer into a member's answer.
    async fn finish(&self, post: Post, answer: Result<Option<Bytes>>) -> Result<Option<Bytes>> {
        match post {
            Post::Pass => answer,
            Post::ZipHeader(split) | Post::ZipData(split) => Err(Error::InvalidData {
                key: split.key.clone(),
                reason: "internal: half of a split read answered alone".into(),
            }),
            Post::Tar { key, expected } => {
                let bytes = match answer {
                    Ok(Some(bytes)) => bytes,
                    Ok(None) => return Ok(None),
                    Err(e) => return Err(for_member(&e, &key)),
                };
                if bytes.len() as u64 != expected {
                    return Err(Error::InvalidData {
                        key,
                        reason: format!(
                            "the archive returned {} bytes of the member's {expected} (it changed since it was indexed?)",
                            bytes.len()
                        ),
                    });
                }
                Ok(Some(bytes))
            }
            Post::Zip {
                key,
                archive,
                path,
                member,
                range,
                stored_end,
            } => {
                let read = match answer {
                    Ok(Some(bytes)) => bytes,
                    Ok(None) => return Ok(None),
                    Err(e) => return Err(for_member(&e, &key)),
                };
                let invalid = |reason: String| Error::InvalidData {
                    key: key.clone(),
                    reason,
                };
                let data_start = zip::locate_data(&path, &member, &read).map_err(invalid)?;
                let data_end = data_start + stored_end;
                let read = if (read.len() as u64) < data_end {
                    // The local extra field was longer than the slack: fetch the rest.
                    let from = member.offset + read.len() as u64;
                    let to = member.offset + data_end;
                    let rest = self
                        .inner
                        .get(&archive, Some(ByteRange::Bounded(from..to)))
                        .await
                        .map_err(|e| for_member(&e, &key))?
                        .unwrap_or_default();
                    // Sized from the bytes in hand (the rest may be short if the archive
                    // changed), not from the member's declared extent.
                    let mut joined = BytesMut::with_capacity(read.len() + rest.len());
                    joined.extend_from_slice(&read);
                    joined.extend_from_slice(&rest);
                    joined.freeze()
                } else {
                    read
                };
                let end = data_end.min(read.len() as u64) as usize;
                let stored = read.slice((data_start as usize).min(end)..end);
                zip::decode(&path, &member, stored, range.as_ref(), &self.config.limits)
                    .map(Some)
                    .map_err(invalid)
            }
        }
    }

    /// Answers a range of a stored zip member from its local header and its data read.
    async fn finish_split(
        &self,
        split: &ZipSplit,
        header: Result<Option<Bytes>>,
        data: Result<Option<Bytes>>,
    ) -> Result<Option<Bytes>> {
        let key = &split.key;
        let (header, data) = match (header, data) {
            (Err(e), _) | (_, Err(e)) => return Err(for_member(&e, key)),
            (Ok(Some(header)), Ok(Some(data))) => (header, data),
            _ => return Ok(None),
        };
        let invalid = |reason: String| Error::InvalidData {
            key: key.clone(),
            reason,
        };
        let member = &split.member;
        let data_start = zip::locate_data(&split.path, member, &header).map_err(invalid)?;
        let wanted = &split.wanted;
        let len = wanted.end - wanted.start;
        // Where the wanted bytes are in the archive, and so in the data read.
        let at = member.offset + data_start + wanted.start;
        let skip = at.saturating_sub(split.data_read_start);
        if skip + len <= data.len() as u64 {
            return Ok(Some(data.slice(skip as usize..(skip + len) as usize)));
        }
        // The local extra field was longer than the slack: read the bytes exactly.
        let bytes = self
            .inner
            .get(&split.archive, Some(ByteRange::Bounded(at..at + len)))
            .await
            .map_err(|e| for_member(&e, key))?;
        match bytes {
            Some(bytes) if bytes.len() as u64 == len => Ok(Some(bytes)),
            Some(bytes) => Err(invalid(format!(
                "member {:?}: the archive ended {} bytes into the {len} bytes asked for",
                split.path,
                bytes.len()
            ))),
            None => Ok(None),
        }
    }

    /// Answers the requests of one `.tar.gz` archive: one whole read, inflated as a stream.
    async fn read_targz(
        &self,
        archive: String,
        requests: Vec<(usize, Request, String)>,
    ) -> Vec<GetManyItem> {
        let whole = self.inner.get(&archive, None).await;
        let bytes = match whole {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                return requests
                    .into_iter()
                    .map(|(i, _, _)| (i, Ok(None)))
                    .collect();
            }
            Err(e) => {
                return requests
                    .into_iter()
                    .map(|(i, r, _)| (i, Err(for_member(&e, &r.key))))
                    .collect();
            }
        };
        let wanted: HashSet<&str> = requests.iter().map(|(_, _, p)| p.as_str()).collect();
        let decoder = flate2::read::MultiGzDecoder::new(&bytes[..]);
        let scan = tar::scan_stream(decoder, &|name| wanted.contains(name), self.config.limits);
        requests
            .iter()
            .map(|(i, request, path)| {
                let key = &request.key;
                let result = match &scan {
                    Err(why) => Err(Error::InvalidData {
                        key: key.clone(),
                        reason: format!("archive {archive:?}: {why}"),
                    }),
                    Ok(scan) => match scan.contents.get(path) {
                        Some(content) => slice_object(key, content, request.range.clone()).map(Some),
                        None => match &scan.index.damage {
                            Some(damage) => Err(Error::InvalidData {
                                key: key.clone(),
                                reason: format!("archive {archive:?} is damaged ({damage}); the member may have been lost"),
                            }),
                            None => Ok(None),
                        },
                    },
                };
                (*i, result)
            })
            .collect()
    }

    async fn run(&self, requests: Vec<Request>) -> GetManyStream<'_> {
        let plan = self.plan(requests).await;
        let now = stream::iter(plan.now);
        let (inner_requests, posts): (Vec<Request>, Vec<(usize, Post)>) =
            plan.inner.into_iter().unzip();
        let mut posts: Vec<Option<(usize, Post)>> = posts.into_iter().map(Some).collect();
        // The first answered half of each split zip range, by request index.
        let mut halves: HashMap<usize, Result<Option<Bytes>>> = HashMap::new();
        let limit = self.inner.io_budget().limit();
        let reads = if inner_requests.is_empty() {
            stream::empty().boxed()
        } else {
            self.inner
                .get_many(inner_requests)
                .map(move |(j, answer)| {
                    // `None` for an index answered twice or out of range (an inner store
                    // bug), and for the first half of a split until the second arrives.
                    let ready = match posts.get_mut(j).and_then(Option::take) {
                        None => None,
                        Some((i, post @ (Post::ZipHeader(_) | Post::ZipData(_)))) => {
                            match halves.remove(&i) {
                                Some(other) => Some((i, post, answer, Some(other))),
                                None => {
                                    halves.insert(i, answer);
                                    None
                                }
                            }
                        }
                        Some((i, post)) => Some((i, post, answer, None)),
                    };
                    async move {
                        let (i, post, answer, other) = ready?;
                        let result = match (post, other) {
                            (Post::ZipHeader(split), Some(data)) => {
                                self.finish_split(&split, answer, data).await
                            }
                            (Post::ZipData(split), Some(header)) => {
                                self.finish_split(&split, header, answer).await
                            }
                            (post, _) => self.finish(post, answer).await,
                        };
                        Some((i, result))
                    }
                })
                .buffer_unordered(limit)
                .filter_map(|item| async move { item })
                .boxed()
        };
        let targz = stream::iter(plan.targz)
            .map(|(archive, requests)| self.read_targz(archive, requests))
            .buffer_unordered(limit)
            .flat_map(stream::iter);
        now.chain(stream::select(reads, targz)).boxed()
    }
}

impl<S: WritableStore> ArchiveStore<S> {
    /// Also writes a sidecar index beside every archive this store indexes by scanning it,
    /// so that later stores (and processes) load the index with one read instead.
    pub fn with_sidecar_writes(mut self) -> Self {
        self.sidecar_writer = Some(write_sidecar::<S>);
        self
    }
}

/// How each request of a batch is answered.
#[derive(Default)]
struct BatchPlan {
    /// Answered without I/O.
    now: Vec<GetManyItem>,
    /// One inner request each, and how to turn its answer into the request's.
    inner: Vec<(Request, (usize, Post))>,
    /// `.tar.gz` members, by archive.
    targz: HashMap<String, Vec<(usize, Request, String)>>,
}

enum MemberRead {
    Now(Result<Option<Bytes>>),
    Read(Request, Post),
    /// Two inner requests whose answers together make the member's.
    Split([(Request, Post); 2]),
}

/// A range inside a stored zip member, read as its local header and a data range.
struct ZipSplit {
    key: String,
    archive: String,
    path: String,
    member: Member,
    /// The wanted bytes of the member's content.
    wanted: std::ops::Range<u64>,
    /// Where the data read starts in the archive.
    data_read_start: u64,
}

/// What to do with an inner answer.
enum Post {
    Pass,
    /// The local header half of a [`ZipSplit`].
    ZipHeader(Arc<ZipSplit>),
    /// The data half of a [`ZipSplit`].
    ZipData(Arc<ZipSplit>),
    Tar {
        key: String,
        expected: u64,
    },
    Zip {
        key: String,
        archive: String,
        path: String,
        member: Member,
        range: Option<ByteRange>,
        /// How many bytes of stored data are needed (all, or up to the end of a range).
        stored_end: u64,
    },
}

/// An inner error, restated for a member key: a range error of the archive is invalid data
/// of the member (its index promised bytes the archive does not have).
fn for_member(error: &Error, key: &str) -> Error {
    match error {
        Error::InvalidRange { key: archive, .. } => Error::InvalidData {
            key: key.to_string(),
            reason: format!("archive {archive:?} is shorter than its index says: {error}"),
        },
        Error::InvalidData { reason, .. } => Error::InvalidData {
            key: key.to_string(),
            reason: reason.clone(),
        },
        Error::Backend { store, source, .. } => Error::Backend {
            store,
            key: key.to_string(),
            source: source.clone(),
        },
        other => other.clone(),
    }
}

#[async_trait]
impl<S: Store> Store for ArchiveStore<S> {
    async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<Option<Bytes>> {
        if let Route::Inner = self.route(key) {
            return self.inner.get(key, range).await;
        }
        let request = Request {
            key: key.to_string(),
            range,
        };
        let mut answers = self.get_many(vec![request]);
        match answers.next().await {
            Some((_, result)) => result,
            None => Err(Error::InvalidData {
                key: key.to_string(),
                reason: "internal: no answer".into(),
            }),
        }
    }

    fn get_many(&self, requests: Vec<Request>) -> GetManyStream<'_> {
        if requests.is_empty() {
            return stream::empty().boxed();
        }
        stream::once(self.run(requests)).flatten().boxed()
    }

    async fn get_with_meta(
        &self,
        key: &str,
        range: Option<ByteRange>,
    ) -> Result<Option<(Bytes, ObjectMeta)>> {
        match self.route(key) {
            Route::Inner => self.inner.get_with_meta(key, range).await,
            Route::Member {
                archive,
                kind,
                path,
            } => {
                let Some(bytes) = self.get(key, range.clone()).await? else {
                    return Ok(None);
                };
                let meta = match kind {
                    ArchiveKind::TarGz => ObjectMeta {
                        size: range.is_none().then_some(bytes.len() as u64),
                        version: None,
                    },
                    _ => match self.cached_index(&archive, kind).await? {
                        Some(index) => ObjectMeta {
                            size: index.get(&path).map(|m| m.size),
                            version: index.archive_version.clone(),
                        },
                        None => ObjectMeta::default(),
                    },
                };
                Ok(Some((bytes, meta)))
            }
        }
    }

    async fn size(&self, key: &str) -> Result<Option<u64>> {
        match self.route(key) {
            Route::Inner => self.inner.size(key).await,
            Route::Member {
                kind: ArchiveKind::TarGz,
                ..
            } => Ok(self.get(key, None).await?.map(|b| b.len() as u64)),
            Route::Member {
                archive,
                kind,
                path,
            } => {
                let Some(index) = self
                    .cached_index(&archive, kind)
                    .await
                    .map_err(|e| for_member(&e, key))?
                else {
                    return Ok(None);
                };
                match (index.get(&path), &index.damage) {
                    (Some(member), _) => Ok(Some(member.size)),
                    (None, None) => Ok(None),
                    (None, Some(damage)) => Err(Error::InvalidData {
                        key: key.to_string(),
                        reason: format!(
                            "archive {archive:?} is damaged ({damage}); the member may have been lost"
                        ),
                    }),
                }
            }
        }
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        Ok(self.size(key).await?.is_some())
    }

    fn io_budget(&self) -> &IoBudget {
        self.inner.io_budget()
    }
}

/// The index cache: one build per archive at a time, bounded by the members it holds.
#[derive(Default)]
struct IndexCache {
    slots: Mutex<HashMap<String, Slot>>,
    tick: AtomicU64,
}

struct Slot {
    cell: Arc<OnceCell<Arc<ArchiveIndex>>>,
    last_used: u64,
    members: usize,
}

impl IndexCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        // A panic while holding the lock cannot leave the map half-updated.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cell(&self, archive: &str) -> Arc<OnceCell<Arc<ArchiveIndex>>> {
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        let mut slots = self.lock();
        let slot = slots.entry(archive.to_string()).or_insert_with(|| Slot {
            cell: Arc::new(OnceCell::new()),
            last_used: tick,
            members: 0,
        });
        slot.last_used = tick;
        slot.cell.clone()
    }

    /// Records that `archive` holds `members` and evicts the least recently used others
    /// while the total is over `max`.
    fn record(&self, archive: &str, members: usize, max: usize) {
        let mut slots = self.lock();
        if let Some(slot) = slots.get_mut(archive) {
            slot.members = members;
        }
        let mut total: usize = slots.values().map(|s| s.members).sum();
        while total > max {
            let victim = slots
                .iter()
                .filter(|(k, s)| k.as_str() != archive && s.cell.initialized())
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, s)| (k.clone(), s.members));
            let Some((key, members)) = victim else { break };
            slots.remove(&key);
            total -= members;
        }
    }

    fn forget_empty(&self, archive: &str) {
        let mut slots = self.lock();
        if slots.get(archive).is_some_and(|s| !s.cell.initialized()) {
            slots.remove(archive);
        }
    }

    fn remove(&self, archive: &str) {
        self.lock().remove(archive);
    }

    fn clear(&self) {
        self.lock().clear();
    }
}
