//! The host's image cache: `<data-dir>/images/<hex>/`, one directory per content digest,
//! filled by pulling the content from the server and emptied of what the server no longer
//! wants.
//!
//! Why a cache by digest: the server's specs name files in its own gallery, which this host
//! does not have. The digest names the content wherever it lies, so a host fetches each image
//! once, whichever set or version name uses it, and can check what it got.
//!
//! A pull (per digest, [`ImageCache::ensure`]):
//!
//! ```text
//!   cached? ──yes──▶ lease
//!     │ no
//!   take the digest's lock (a second Ensure of it waits here, then finds it cached)
//!   take a pull slot (at most MAX_PULLS at once)
//!   dial: Pull{digest} ──▶ PullStart{size} ──▶ stream ─▶ unpack into .pull-<hex>-N, hashing
//!     ├─ digest as asked ──▶ rename to <hex> (atomic) ──▶ lease
//!     └─ anything else   ──▶ remove .pull-<hex>-N (nothing is kept) ──▶ error
//! ```
//! The pull runs on a connection of its own, outside the link's task, and the unpacking and
//! hashing on a blocking thread: a large image delays no heartbeat.
//!
//! A lease keeps its digest from removal while a driver call uses the copy; [`ImageCache::keep_only`]
//! removes the rest (moved aside under the lease lock, so a lease never sees half a removal).

use async_trait::async_trait;
use herd_agent_wire::ImageRef;
use herd_model::image::content;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// How many pulls may run at once.
pub const MAX_PULLS: usize = 2;
/// How long a pull may wait for its next bytes.
pub const READ_IDLE: Duration = Duration::from_secs(60);

/// Where an image's content comes from: the server, over a connection of its own.
#[async_trait]
pub trait Origin: Send + Sync {
    /// The content of `digest`: its size and a reader of exactly that stream.
    async fn open(&self, digest: &str) -> Result<(u64, Box<dyn AsyncRead + Send + Unpin>), PullError>;
}

/// Why an image could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PullError {
    /// Permanent for this digest: the server has no such image, or the content is not it.
    #[error("{0}")]
    Unavailable(String),
    /// Transient: the connection, the disk; trying again may help.
    #[error("{0}")]
    Failed(String),
}

/// The cache (see the module docs).
pub struct ImageCache {
    dir: PathBuf,
    origin: Arc<dyn Origin>,
    slots: tokio::sync::Semaphore,
    /// Pulls waiting for a slot or running.
    queued: std::sync::atomic::AtomicUsize,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    leases: Mutex<HashMap<String, usize>>,
    pulls: AtomicU64,
    next_tmp: AtomicU64,
}

/// A digest in use by a driver call: its copy stays until the lease drops.
pub struct Lease {
    cache: Arc<ImageCache>,
    digest: String,
    /// The content's directory.
    pub path: PathBuf,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut leases = self.cache.leases.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = leases.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                leases.remove(&self.digest);
            }
        }
    }
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix(content::DIGEST_PREFIX).unwrap_or(digest)
}

impl ImageCache {
    /// The cache in `dir` (created), fetching from `origin`. Pulls a previous run left half
    /// done are removed: none can be running yet.
    pub fn open(dir: PathBuf, origin: Arc<dyn Origin>) -> std::io::Result<Arc<Self>> {
        std::fs::create_dir_all(&dir)?;
        for e in std::fs::read_dir(&dir)?.flatten() {
            if e.file_name().to_string_lossy().starts_with('.') {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        Ok(Arc::new(ImageCache {
            dir,
            origin,
            slots: tokio::sync::Semaphore::new(MAX_PULLS),
            queued: std::sync::atomic::AtomicUsize::new(0),
            locks: Mutex::default(),
            leases: Mutex::default(),
            pulls: AtomicU64::new(0),
            next_tmp: AtomicU64::new(0),
        }))
    }

    /// How many pulls this cache started.
    pub fn pulls(&self) -> u64 {
        self.pulls.load(Ordering::Relaxed)
    }

    /// Pulls waiting for a slot or running now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Where `digest`'s content lies once cached.
    pub fn path_of(&self, digest: &str) -> PathBuf {
        self.dir.join(hex_of(digest))
    }

    /// The digests cached now.
    pub fn cached(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let d = format!("{}{}", content::DIGEST_PREFIX, e.file_name().to_string_lossy());
                content::is_digest(&d).then_some(d)
            })
            .collect();
        v.sort();
        v
    }

    /// `image`'s content on this host, pulled first if it is not here.
    pub async fn ensure(self: &Arc<Self>, image: &ImageRef) -> Result<Lease, PullError> {
        if !content::is_digest(&image.digest) {
            return Err(PullError::Unavailable(format!(
                "image {}: '{}' is not a sha256 digest",
                image.urn,
                image.digest.escape_debug()
            )));
        }
        *self.leases.lock().unwrap_or_else(|e| e.into_inner()).entry(image.digest.clone()).or_default() += 1;
        let lease = Lease { cache: self.clone(), digest: image.digest.clone(), path: self.path_of(&image.digest) };
        if lease.path.is_dir() {
            return Ok(lease);
        }
        let lock =
            self.locks.lock().unwrap_or_else(|e| e.into_inner()).entry(image.digest.clone()).or_default().clone();
        let _one = lock.lock().await;
        if lease.path.is_dir() {
            return Ok(lease); // another call pulled it meanwhile
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        let pulled = async {
            let _slot = self.slots.acquire().await.map_err(|_| PullError::Failed("the cache is closing".into()))?;
            self.pull(image, &lease.path).await
        }
        .await;
        self.queued.fetch_sub(1, Ordering::Relaxed);
        pulled.map(|()| lease)
    }

    async fn pull(&self, image: &ImageRef, target: &Path) -> Result<(), PullError> {
        self.pulls.fetch_add(1, Ordering::Relaxed);
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!(".pull-{}-{}-{n}", hex_of(&image.digest), std::process::id()));
        let started = std::time::Instant::now();
        let result = self.pull_into(image, &tmp, target).await;
        match &result {
            Ok(size) => {
                tracing::info!(image = %image.urn, digest = %image.digest, bytes = size, took = ?started.elapsed(), "image pulled")
            }
            Err(e) => {
                tracing::warn!(image = %image.urn, error = %e, "image pull failed; nothing was kept");
                let tmp = tmp.clone();
                let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(tmp)).await;
            }
        }
        result.map(drop)
    }

    /// Fetches, unpacks and checks `image` into `tmp`, then renames it to `target`. Returns the
    /// stream's size.
    async fn pull_into(&self, image: &ImageRef, tmp: &Path, target: &Path) -> Result<u64, PullError> {
        let (size, mut reader) = self.origin.open(&image.digest).await?;
        let free = nix::sys::statvfs::statvfs(&self.dir)
            .map_or(u64::MAX, |s| s.blocks_available().saturating_mul(s.fragment_size()));
        if size > free {
            return Err(PullError::Failed(format!(
                "image {}: {size} bytes do not fit in the {free} bytes free under {}",
                image.urn,
                self.dir.display()
            )));
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
        let root = tmp.to_path_buf();
        // The unpacker hashes and writes on a blocking thread, chunk by chunk.
        let unpacking = tokio::task::spawn_blocking(move || {
            let mut u = content::Unpacker::new(&root)?;
            while let Some(chunk) = rx.blocking_recv() {
                u.feed(&chunk)?;
            }
            u.finish()
        });
        let mut got = 0u64;
        let read = async {
            loop {
                let mut buf = vec![0u8; 256 << 10];
                let n = match tokio::time::timeout(READ_IDLE, reader.read(&mut buf)).await {
                    Ok(Ok(n)) => n,
                    Ok(Err(e)) => {
                        return Err(PullError::Failed(format!("image {}: reading from the server: {e}", image.urn)))
                    }
                    Err(_) => {
                        return Err(PullError::Failed(format!(
                            "image {}: no bytes from the server for {READ_IDLE:?}",
                            image.urn
                        )))
                    }
                };
                if n == 0 {
                    return Ok(());
                }
                got += n as u64;
                if got > size {
                    return Err(PullError::Unavailable(format!(
                        "image {}: the server sent more than the {size} bytes it announced",
                        image.urn
                    )));
                }
                buf.truncate(n);
                if tx.send(buf).await.is_err() {
                    return Ok(()); // the unpacker stopped: its error says why
                }
            }
        };
        let read = read.await;
        drop(tx);
        let unpacked =
            unpacking.await.map_err(|e| PullError::Failed(format!("image {}: the unpacker: {e}", image.urn)))?;
        read?;
        let digest = match unpacked {
            Ok(d) => d,
            Err(e @ content::ContentError::Io { .. }) => {
                return Err(PullError::Failed(format!("image {}: writing its copy: {e}", image.urn)))
            }
            Err(e) if got < size => {
                return Err(PullError::Failed(format!(
                    "image {}: the pull stopped after {got} of {size} bytes: {e}",
                    image.urn
                )))
            }
            Err(e) => {
                return Err(PullError::Unavailable(format!(
                    "image {}: the content from the server is refused: {e}",
                    image.urn
                )))
            }
        };
        if digest != image.digest {
            return Err(PullError::Unavailable(format!(
                "image {}: the content pulled from the server has digest {digest}, not {} as its gallery records; nothing was kept",
                image.urn, image.digest
            )));
        }
        match std::fs::rename(tmp, target) {
            Ok(()) => {}
            // Another pull put the same content there: ours goes.
            Err(_) if target.is_dir() => {
                let _ = std::fs::remove_dir_all(tmp);
            }
            Err(e) => return Err(PullError::Failed(format!("image {}: placing its copy: {e}", image.urn))),
        }
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(size)
    }

    /// Removes every cached digest not in `wanted` that no driver call uses now. Returns the
    /// digests removed.
    pub async fn keep_only(&self, wanted: &HashSet<String>) -> Vec<String> {
        let mut removed = Vec::new();
        let mut doomed = Vec::new();
        {
            let leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
            for d in self.cached() {
                if wanted.contains(&d) || leases.contains_key(&d) {
                    continue;
                }
                let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
                let aside = self.dir.join(format!(".gone-{}-{n}", hex_of(&d)));
                if std::fs::rename(self.path_of(&d), &aside).is_ok() {
                    doomed.push(aside);
                    removed.push(d);
                }
            }
        }
        if !doomed.is_empty() {
            let _ = tokio::task::spawn_blocking(move || {
                for p in doomed {
                    let _ = std::fs::remove_dir_all(p);
                }
            })
            .await;
            tracing::info!(digests = ?removed, "images no longer in the gallery removed from this host");
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_model::image::ImageSource;

    /// Content served from a directory of this machine, counting opens; `corrupt` flips a byte
    /// of what it sends.
    struct Local {
        images: HashMap<String, ImageSource>,
        opens: AtomicU64,
        corrupt: bool,
        gate: tokio::sync::Semaphore,
        /// Opens in progress now, and the most there were at once.
        open_now: std::sync::atomic::AtomicUsize,
        open_max: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl Origin for Local {
        async fn open(&self, digest: &str) -> Result<(u64, Box<dyn AsyncRead + Send + Unpin>), PullError> {
            self.opens.fetch_add(1, Ordering::Relaxed);
            let now = self.open_now.fetch_add(1, Ordering::SeqCst) + 1;
            self.open_max.fetch_max(now, Ordering::SeqCst);
            let go = self.gate.acquire().await;
            self.open_now.fetch_sub(1, Ordering::SeqCst);
            let _go = go.unwrap();
            let source = self
                .images
                .get(digest)
                .ok_or_else(|| PullError::Unavailable(format!("no image has digest {digest}")))?;
            let all = content::entries(source).unwrap();
            let mut bytes = Vec::new();
            content::write_stream(&all, &mut bytes).unwrap();
            if self.corrupt {
                let at = bytes.len() - 2;
                bytes[at] ^= 0xff;
            }
            Ok((bytes.len() as u64, Box::new(std::io::Cursor::new(bytes))))
        }
    }

    fn image(dir: &Path) -> (ImageRef, ImageSource) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("init"), b"#!/bin/sh\n").unwrap();
        std::fs::write(dir.join("data"), vec![1u8; 1 << 20]).unwrap();
        let src = ImageSource::Directory { path: dir.display().to_string() };
        (ImageRef { urn: "P:O:S:1".into(), digest: content::digest(&src).unwrap() }, src)
    }

    fn cache(tmp: &Path, src: &ImageSource, r: &ImageRef, corrupt: bool) -> (Arc<ImageCache>, Arc<Local>) {
        caching(tmp, HashMap::from([(r.digest.clone(), src.clone())]), corrupt)
    }

    fn caching(tmp: &Path, images: HashMap<String, ImageSource>, corrupt: bool) -> (Arc<ImageCache>, Arc<Local>) {
        let origin = Arc::new(Local {
            images,
            opens: AtomicU64::new(0),
            corrupt,
            gate: tokio::sync::Semaphore::new(0),
            open_now: Default::default(),
            open_max: Default::default(),
        });
        (ImageCache::open(tmp.join("cache"), origin.clone()).unwrap(), origin)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_max_pulls_run_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let mut images = HashMap::new();
        let mut refs = Vec::new();
        for i in 0..MAX_PULLS + 1 {
            let dir = tmp.path().join(format!("img{i}"));
            let (mut r, src) = image(&dir);
            std::fs::write(dir.join("which"), i.to_string()).unwrap();
            r.digest = content::digest(&src).unwrap();
            images.insert(r.digest.clone(), src);
            refs.push(r);
        }
        let (cache, origin) = caching(tmp.path(), images, false);
        let tasks: Vec<_> = refs
            .iter()
            .cloned()
            .map(|r| {
                let c = cache.clone();
                tokio::spawn(async move { c.ensure(&r).await.map(drop) })
            })
            .collect();
        // Every pull has asked for a slot and MAX_PULLS are open at the server, held there.
        tokio::time::timeout(Duration::from_secs(10), async {
            while cache.queued() < MAX_PULLS + 1 || origin.open_now.load(Ordering::SeqCst) < MAX_PULLS {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("all pulls queued, MAX_PULLS open");
        assert_eq!(origin.open_now.load(Ordering::SeqCst), MAX_PULLS, "the last one waits for a slot");
        origin.gate.add_permits(100);
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(origin.open_max.load(Ordering::SeqCst), MAX_PULLS);
        assert_eq!(cache.pulls(), (MAX_PULLS + 1) as u64);
        assert_eq!(cache.cached().len(), MAX_PULLS + 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_ensures_of_one_digest_share_one_pull_and_the_copy_is_the_content() {
        let tmp = tempfile::tempdir().unwrap();
        let (r, src) = image(&tmp.path().join("img"));
        let (cache, origin) = cache(tmp.path(), &src, &r, false);
        let (a, b) = (cache.clone(), cache.clone());
        let (ra, rb) = (r.clone(), r.clone());
        let first = tokio::spawn(async move { a.ensure(&ra).await.map(|l| l.path.clone()) });
        let second = tokio::spawn(async move { b.ensure(&rb).await.map(|l| l.path.clone()) });
        // Both are waiting before any content is served.
        let waiting = tokio::time::timeout(Duration::from_secs(10), async {
            while origin.opens.load(Ordering::Relaxed) == 0 {
                tokio::task::yield_now().await;
            }
        });
        waiting.await.expect("the first pull to open");
        origin.gate.add_permits(10);
        let (pa, pb) = (first.await.unwrap().unwrap(), second.await.unwrap().unwrap());
        assert_eq!(pa, pb);
        assert_eq!(origin.opens.load(Ordering::Relaxed), 1, "one pull for two ensures");
        assert_eq!(cache.pulls(), 1);
        let local = ImageSource::Directory { path: pa.display().to_string() };
        assert_eq!(content::digest(&local).unwrap(), r.digest, "the cached copy is the content");
        assert_eq!(cache.cached(), vec![r.digest.clone()]);
        // Cached: a later ensure pulls nothing.
        cache.ensure(&r).await.unwrap();
        assert_eq!(origin.opens.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_mismatch_names_the_image_and_both_digests_and_keeps_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let (r, src) = image(&tmp.path().join("img"));
        let (cache, origin) = cache(tmp.path(), &src, &r, true);
        origin.gate.add_permits(10);
        let e = cache.ensure(&r).await.err().expect("refused").to_string();
        assert!(e.contains("image P:O:S:1") && e.contains(&r.digest) && e.contains("has digest sha256:"), "{e}");
        assert!(e.contains("nothing was kept"), "{e}");
        assert!(std::fs::read_dir(tmp.path().join("cache")).unwrap().next().is_none(), "no copy, no leftovers");
        // An unknown digest is unavailable, not an I/O error.
        let other = ImageRef { urn: "P:O:S:2".into(), digest: format!("sha256:{}", "0".repeat(64)) };
        assert!(matches!(cache.ensure(&other).await, Err(PullError::Unavailable(_))));
        let junk = ImageRef { urn: "P:O:S:3".into(), digest: "md5:x".into() };
        assert!(cache.ensure(&junk).await.err().unwrap().to_string().contains("not a sha256 digest"));
    }

    #[tokio::test]
    async fn keep_only_removes_unwanted_digests_but_not_one_in_use() {
        let tmp = tempfile::tempdir().unwrap();
        let (r, src) = image(&tmp.path().join("img"));
        let (cache, origin) = cache(tmp.path(), &src, &r, false);
        origin.gate.add_permits(10);
        let lease = cache.ensure(&r).await.unwrap();
        assert!(cache.keep_only(&HashSet::new()).await.is_empty(), "leased: kept");
        assert!(lease.path.is_dir());
        drop(lease);
        assert_eq!(cache.keep_only(&HashSet::from([r.digest.clone()])).await, Vec::<String>::new(), "wanted: kept");
        assert_eq!(cache.keep_only(&HashSet::new()).await, vec![r.digest.clone()]);
        assert!(!cache.path_of(&r.digest).exists());
        assert!(std::fs::read_dir(tmp.path().join("cache")).unwrap().next().is_none());
    }
}
