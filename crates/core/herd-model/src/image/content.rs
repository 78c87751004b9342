//! An image's content as one canonical byte stream, its SHA-256 digest, and the unpacking of
//! that stream on a host.
//!
//! Why one stream for every kind of image: a joined host fetches an image from the server by
//! digest (`herd-agent`'s image cache). The digest must name the content, not where the server
//! keeps it, and the host must be able to check it while the bytes arrive, without holding the
//! image twice. So the server sends exactly the bytes the digest is over, and the host hashes
//! what it unpacks: what it keeps is what was hashed.
//!
//! The stream (all integers big-endian):
//!
//! ```text
//!   "herd-image-content/1\n"
//!   entry*      'd' name_len:u16 name mode:u32                  a directory
//!               'f' name_len:u16 name mode:u32 len:u64 bytes    a regular file
//!   'e'                                                         the end
//! ```
//! Entries come in byte order of their names, so one tree has one stream: a directory image's
//! entries are its tree, relative paths with `/` (the directory itself is not an entry); a disk
//! image is one file named `disk`; a kernel image is `kernel` and, with one, `initrd`. Modes are
//! the permission bits (`0o7777`). An image holds directories and regular files only (the
//! gallery's import refuses links already).
//!
//! The digest is `sha256:` and the hex SHA-256 of the whole stream.

use super::ImageSource;
use sha2::{Digest as _, Sha256};
use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What every stream starts with.
pub const MAGIC: &[u8] = b"herd-image-content/1\n";
/// The prefix of every digest.
pub const DIGEST_PREFIX: &str = "sha256:";
/// The longest entry name (bytes).
pub const MAX_NAME: usize = 4096;

const DIR: u8 = b'd';
const FILE: u8 = b'f';
const END: u8 = b'e';

/// One entry of an image's content, and where the server reads it from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The relative path in the stream (`/`-separated, never empty).
    pub name: String,
    /// Permission bits.
    pub mode: u32,
    /// `None`: a directory; `Some(len)`: a file of `len` bytes.
    pub len: Option<u64>,
    /// The file or directory on the server.
    pub from: PathBuf,
}

/// Why content could not be listed, streamed or unpacked.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("image content: {0}")]
    Invalid(String),
}

impl ContentError {
    fn io(path: &Path, source: io::Error) -> Self {
        ContentError::Io { path: path.display().to_string(), source }
    }
}

/// Whether `d` is a digest as this module writes them: `sha256:` and 64 lower-case hex digits.
pub fn is_digest(d: &str) -> bool {
    d.strip_prefix(DIGEST_PREFIX)
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// The entries of `source`, in stream order.
pub fn entries(source: &ImageSource) -> Result<Vec<Entry>, ContentError> {
    let mut all = Vec::new();
    match source {
        ImageSource::Directory { path } => walk(Path::new(path), "", &mut all)?,
        ImageSource::Disk { path, .. } => all.push(file_entry("disk", Path::new(path))?),
        ImageSource::Kernel { kernel, initrd, .. } => {
            all.push(file_entry("kernel", Path::new(kernel))?);
            if let Some(i) = initrd {
                all.push(file_entry("initrd", Path::new(i))?);
            }
        }
    }
    all.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    Ok(all)
}

fn file_entry(name: &str, path: &Path) -> Result<Entry, ContentError> {
    let m = std::fs::metadata(path).map_err(|e| ContentError::io(path, e))?;
    if !m.is_file() {
        return Err(ContentError::Invalid(format!("{} is not a regular file", path.display())));
    }
    Ok(Entry { name: name.into(), mode: m.permissions().mode() & 0o7777, len: Some(m.len()), from: path.into() })
}

fn walk(dir: &Path, prefix: &str, all: &mut Vec<Entry>) -> Result<(), ContentError> {
    for item in std::fs::read_dir(dir).map_err(|e| ContentError::io(dir, e))? {
        let item = item.map_err(|e| ContentError::io(dir, e))?;
        let path = item.path();
        let Some(leaf) = item.file_name().to_str().map(str::to_string) else {
            return Err(ContentError::Invalid(format!("{} is not a UTF-8 name", path.display())));
        };
        let name = if prefix.is_empty() { leaf } else { format!("{prefix}/{leaf}") };
        if name.len() > MAX_NAME {
            return Err(ContentError::Invalid(format!("{} has a name longer than {MAX_NAME} bytes", path.display())));
        }
        let m = std::fs::symlink_metadata(&path).map_err(|e| ContentError::io(&path, e))?;
        let mode = m.permissions().mode() & 0o7777;
        if m.is_dir() {
            all.push(Entry { name: name.clone(), mode, len: None, from: path.clone() });
            walk(&path, &name, all)?;
        } else if m.is_file() {
            all.push(Entry { name, mode, len: Some(m.len()), from: path });
        } else {
            return Err(ContentError::Invalid(format!(
                "{} is neither a directory nor a regular file (an image holds only those)",
                path.display()
            )));
        }
    }
    Ok(())
}

fn head(e: &Entry) -> Vec<u8> {
    let mut h = Vec::with_capacity(1 + 2 + e.name.len() + 4 + 8);
    h.push(if e.len.is_some() { FILE } else { DIR });
    h.extend_from_slice(&(e.name.len() as u16).to_be_bytes());
    h.extend_from_slice(e.name.as_bytes());
    h.extend_from_slice(&e.mode.to_be_bytes());
    if let Some(len) = e.len {
        h.extend_from_slice(&len.to_be_bytes());
    }
    h
}

/// The length of the stream of `entries`, in bytes.
pub fn stream_len(entries: &[Entry]) -> u64 {
    let heads: u64 = entries.iter().map(|e| head(e).len() as u64 + e.len.unwrap_or(0)).sum();
    MAGIC.len() as u64 + heads + 1
}

/// Writes the stream of `entries` to `w`, reading each file as it goes. A file whose length
/// changed since it was listed is an error (the stream would not be the one listed).
pub fn write_stream(entries: &[Entry], w: &mut dyn Write) -> Result<(), ContentError> {
    let out = |e: io::Error| ContentError::Io { path: "the stream".into(), source: e };
    w.write_all(MAGIC).map_err(out)?;
    let mut buf = vec![0u8; 256 << 10];
    for e in entries {
        w.write_all(&head(e)).map_err(out)?;
        let Some(len) = e.len else { continue };
        let mut f = std::fs::File::open(&e.from).map_err(|x| ContentError::io(&e.from, x))?;
        let mut left = len;
        while left > 0 {
            let want = buf.len().min(left as usize);
            let n = f.read(&mut buf[..want]).map_err(|x| ContentError::io(&e.from, x))?;
            if n == 0 {
                return Err(ContentError::Invalid(format!("{} shrank while it was read", e.from.display())));
            }
            w.write_all(&buf[..n]).map_err(out)?;
            left -= n as u64;
        }
        if f.read(&mut buf[..1]).map_err(|x| ContentError::io(&e.from, x))? != 0 {
            return Err(ContentError::Invalid(format!("{} grew while it was read", e.from.display())));
        }
    }
    w.write_all(&[END]).map_err(out)?;
    Ok(())
}

/// A `Write` that hashes.
struct Hashing(Sha256);

impl Write for Hashing {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.update(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn digest_text(h: Sha256) -> String {
    format!("{DIGEST_PREFIX}{}", hex::encode(h.finalize()))
}

/// The digest of `source`'s content (reads every file: call it off the async runtime).
pub fn digest(source: &ImageSource) -> Result<String, ContentError> {
    let all = entries(source)?;
    let mut h = Hashing(Sha256::new());
    write_stream(&all, &mut h)?;
    Ok(digest_text(h.0))
}

/// `source` as unpacked at `root`: the same kind of image with its paths in `root`.
pub fn localize(source: &ImageSource, root: &Path) -> ImageSource {
    let at = |name: &str| root.join(name).to_string_lossy().into_owned();
    match source {
        ImageSource::Directory { .. } => ImageSource::Directory { path: root.to_string_lossy().into_owned() },
        ImageSource::Disk { format, .. } => ImageSource::Disk { path: at("disk"), format: format.clone() },
        ImageSource::Kernel { initrd, cmdline, .. } => ImageSource::Kernel {
            kernel: at("kernel"),
            initrd: initrd.as_ref().map(|_| at("initrd")),
            cmdline: cmdline.clone(),
        },
    }
}

/// Where an [`Unpacker`] is in the stream.
enum Unpack {
    /// Reading the magic (bytes gathered so far in `pending`).
    Magic,
    /// Reading an entry's head, or the end marker.
    Head,
    /// Copying a file's bytes.
    Body { file: std::fs::File, path: PathBuf, mode: u32, left: u64 },
    /// After the end marker: nothing more may come.
    Done,
}

/// Unpacks a stream into a new directory `root`, hashing every byte, refusing any name that
/// would leave `root`, any entry out of order, and anything after the end. What it wrote is
/// the caller's to remove when it fails or the digest is not the one expected.
pub struct Unpacker {
    root: PathBuf,
    state: Unpack,
    hash: Sha256,
    pending: Vec<u8>,
    last: Option<String>,
    dirs: HashSet<String>,
    /// Directories and their modes, applied at the end (a read-only directory must still take
    /// its files first).
    dir_modes: Vec<(PathBuf, u32)>,
    bytes: u64,
}

impl Unpacker {
    /// Starts unpacking into `root`, which must not exist yet.
    pub fn new(root: &Path) -> Result<Self, ContentError> {
        std::fs::DirBuilder::new().mode(0o755).create(root).map_err(|e| ContentError::io(root, e))?;
        Ok(Unpacker {
            root: root.into(),
            state: Unpack::Magic,
            hash: Sha256::new(),
            pending: Vec::new(),
            last: None,
            dirs: HashSet::new(),
            dir_modes: Vec::new(),
            bytes: 0,
        })
    }

    /// The stream's bytes read so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Takes the next bytes of the stream.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), ContentError> {
        self.hash.update(data);
        self.bytes += data.len() as u64;
        while !data.is_empty() {
            match &mut self.state {
                Unpack::Magic => {
                    let take = (MAGIC.len() - self.pending.len()).min(data.len());
                    self.pending.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if self.pending.len() == MAGIC.len() {
                        if self.pending != MAGIC {
                            return Err(ContentError::Invalid("the stream does not start as an image stream".into()));
                        }
                        self.pending.clear();
                        self.state = Unpack::Head;
                    }
                }
                Unpack::Head => {
                    let take = self.head_needed()?.saturating_sub(self.pending.len()).min(data.len()).max(1);
                    self.pending.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if self.pending.len() == self.head_needed()? {
                        self.entry()?;
                    }
                }
                Unpack::Body { file, path, left, .. } => {
                    let take = (*left).min(data.len() as u64) as usize;
                    file.write_all(&data[..take]).map_err(|e| ContentError::io(path, e))?;
                    *left -= take as u64;
                    data = &data[take..];
                    if *left == 0 {
                        self.end_file()?;
                    }
                }
                Unpack::Done => return Err(ContentError::Invalid("bytes after the end of the stream".into())),
            }
        }
        Ok(())
    }

    /// How many bytes the head being read has, as far as `pending` tells.
    fn head_needed(&self) -> Result<usize, ContentError> {
        let p = &self.pending;
        let Some(&tag) = p.first() else { return Ok(1) };
        match tag {
            END => Ok(1),
            DIR | FILE if p.len() < 3 => Ok(3),
            DIR | FILE => {
                let n = u16::from_be_bytes([p[1], p[2]]) as usize;
                Ok(3 + n + 4 + if tag == FILE { 8 } else { 0 })
            }
            other => Err(ContentError::Invalid(format!("an entry of unknown type {other:#04x}"))),
        }
    }

    /// Acts on the complete head in `pending`.
    fn entry(&mut self) -> Result<(), ContentError> {
        let p = std::mem::take(&mut self.pending);
        if p[0] == END {
            self.state = Unpack::Done;
            return Ok(());
        }
        let n = u16::from_be_bytes([p[1], p[2]]) as usize;
        let name = std::str::from_utf8(&p[3..3 + n])
            .map_err(|_| ContentError::Invalid("an entry name that is not UTF-8".into()))?
            .to_string();
        let mode = u32::from_be_bytes(p[3 + n..3 + n + 4].try_into().expect("4 bytes"));
        self.check_name(&name, mode)?;
        let path = self.root.join(&name);
        if p[0] == DIR {
            std::fs::DirBuilder::new().mode(0o700).create(&path).map_err(|e| ContentError::io(&path, e))?;
            self.dir_modes.push((path, mode));
            self.dirs.insert(name.clone());
            self.last = Some(name);
            return Ok(());
        }
        let len = u64::from_be_bytes(p[3 + n + 4..3 + n + 12].try_into().expect("8 bytes"));
        // `create_new` never follows a link, and every directory above was made here.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| ContentError::io(&path, e))?;
        self.last = Some(name);
        self.state = Unpack::Body { file, path, mode, left: len };
        if len == 0 {
            self.end_file()?;
        }
        Ok(())
    }

    fn end_file(&mut self) -> Result<(), ContentError> {
        if let Unpack::Body { file, path, mode, .. } = std::mem::replace(&mut self.state, Unpack::Head) {
            file.sync_all().map_err(|e| ContentError::io(&path, e))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o777))
                .map_err(|e| ContentError::io(&path, e))?;
        }
        Ok(())
    }

    /// A name must stay inside the root, come after the last one, and sit in a directory the
    /// stream made.
    fn check_name(&self, name: &str, mode: u32) -> Result<(), ContentError> {
        let bad = |why: &str| Err(ContentError::Invalid(format!("entry '{}': {why}", name.escape_debug())));
        if name.is_empty() || name.len() > MAX_NAME || name.contains('\0') {
            return bad("an empty, overlong or NUL-holding name");
        }
        if name.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            return bad("a name must be a relative path of plain components");
        }
        if self.last.as_deref().is_some_and(|l| l.as_bytes() >= name.as_bytes()) {
            return bad("entries must come in byte order of their names, each once");
        }
        if let Some((parent, _)) = name.rsplit_once('/') {
            if !self.dirs.contains(parent) {
                return bad("its directory is not an entry before it");
            }
        }
        if mode & !0o7777 != 0 {
            return bad("mode has bits beyond the permission bits");
        }
        Ok(())
    }

    /// Ends the stream: applies the directories' modes and returns the digest of everything
    /// fed. A stream that did not reach its end marker is an error.
    pub fn finish(mut self) -> Result<String, ContentError> {
        if !matches!(self.state, Unpack::Done) {
            return Err(ContentError::Invalid(format!("the stream ended early, after {} bytes", self.bytes)));
        }
        for (path, mode) in self.dir_modes.drain(..).rev() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o777))
                .map_err(|e| ContentError::io(&path, e))?;
        }
        Ok(digest_text(self.hash))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(root: &Path) {
        std::fs::create_dir_all(root.join("bin/sub")).unwrap();
        std::fs::write(root.join("init"), b"#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(root.join("init"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(root.join("bin/a.txt"), vec![7u8; 300_000]).unwrap();
        std::fs::write(root.join("bin/sub/empty"), b"").unwrap();
        std::fs::write(root.join("bin-x"), b"x").unwrap();
    }

    fn dir(p: &Path) -> ImageSource {
        ImageSource::Directory { path: p.display().to_string() }
    }

    fn stream(src: &ImageSource) -> Vec<u8> {
        let mut v = Vec::new();
        let all = entries(src).unwrap();
        write_stream(&all, &mut v).unwrap();
        assert_eq!(v.len() as u64, stream_len(&all));
        v
    }

    #[test]
    fn a_directory_digest_is_over_names_modes_and_contents_not_where_it_lies() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        tree(a.path());
        tree(b.path());
        let da = digest(&dir(a.path())).unwrap();
        assert!(is_digest(&da), "{da}");
        assert_eq!(da, digest(&dir(b.path())).unwrap(), "the same tree elsewhere: the same digest");
        // Parents come before children, in byte order.
        let names: Vec<String> = entries(&dir(a.path())).unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(names, ["bin", "bin-x", "bin/a.txt", "bin/sub", "bin/sub/empty", "init"]);
        // A mode, a byte, a name: each changes the digest.
        std::fs::set_permissions(b.path().join("init"), std::fs::Permissions::from_mode(0o700)).unwrap();
        let mode = digest(&dir(b.path())).unwrap();
        assert_ne!(mode, da);
        std::fs::set_permissions(b.path().join("init"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(b.path().join("bin/sub/empty"), b"!").unwrap();
        assert_ne!(digest(&dir(b.path())).unwrap(), da);
        std::fs::remove_file(b.path().join("bin/sub/empty")).unwrap();
        std::fs::write(b.path().join("bin/sub/other"), b"").unwrap();
        assert_ne!(digest(&dir(b.path())).unwrap(), da);
        // A link is refused, by name.
        std::os::unix::fs::symlink("/etc/passwd", a.path().join("bin/link")).unwrap();
        let e = digest(&dir(a.path())).unwrap_err().to_string();
        assert!(e.contains("bin/link") && e.contains("neither a directory nor a regular file"), "{e}");
    }

    #[test]
    fn file_images_are_named_by_kind_and_unpack_to_their_kind() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("vmlinuz"), b"kernel").unwrap();
        std::fs::write(d.path().join("initrd.img"), b"initrd").unwrap();
        let k = ImageSource::Kernel {
            kernel: d.path().join("vmlinuz").display().to_string(),
            initrd: Some(d.path().join("initrd.img").display().to_string()),
            cmdline: Some("console=ttyS0".into()),
        };
        let names: Vec<String> = entries(&k).unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(names, ["initrd", "kernel"]);
        let out = d.path().join("out");
        let mut u = Unpacker::new(&out).unwrap();
        u.feed(&stream(&k)).unwrap();
        assert_eq!(u.finish().unwrap(), digest(&k).unwrap());
        let local = localize(&k, &out);
        let ImageSource::Kernel { kernel, initrd, cmdline } = &local else { panic!("{local:?}") };
        assert_eq!(std::fs::read(kernel).unwrap(), b"kernel");
        assert_eq!(std::fs::read(initrd.as_ref().unwrap()).unwrap(), b"initrd");
        assert_eq!(cmdline.as_deref(), Some("console=ttyS0"));
    }

    #[test]
    fn unpacking_in_any_chunking_gives_the_tree_and_its_digest() {
        let (a, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        tree(a.path());
        let src = dir(a.path());
        let bytes = stream(&src);
        for (i, chunk) in [1usize, 7, 4096, bytes.len()].into_iter().enumerate() {
            let root = out.path().join(i.to_string());
            let mut u = Unpacker::new(&root).unwrap();
            for c in bytes.chunks(chunk) {
                u.feed(c).unwrap();
            }
            assert_eq!(u.finish().unwrap(), digest(&src).unwrap(), "chunks of {chunk}");
            assert_eq!(digest(&dir(&root)).unwrap(), digest(&src).unwrap(), "the unpacked tree is the same tree");
            let m = std::fs::metadata(root.join("init")).unwrap().permissions().mode() & 0o777;
            assert_eq!(m, 0o755);
        }
    }

    #[test]
    fn a_corrupt_short_or_escaping_stream_is_refused() {
        let (a, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        tree(a.path());
        let src = dir(a.path());
        let good = stream(&src);
        // One flipped content byte: it unpacks, but its digest is another.
        let mut flipped = good.clone();
        let at = flipped.len() - 100;
        flipped[at] ^= 1;
        let mut u = Unpacker::new(&out.path().join("flip")).unwrap();
        u.feed(&flipped).unwrap();
        assert_ne!(u.finish().unwrap(), digest(&src).unwrap());
        // Cut short.
        let mut u = Unpacker::new(&out.path().join("short")).unwrap();
        u.feed(&good[..good.len() - 1]).unwrap();
        assert!(u.finish().unwrap_err().to_string().contains("ended early"));
        // Trailing bytes.
        let mut u = Unpacker::new(&out.path().join("long")).unwrap();
        let e = u.feed(&[good.as_slice(), b"x"].concat()).unwrap_err().to_string();
        assert!(e.contains("after the end"), "{e}");
        // Names that leave the root, or come out of order.
        for (name, why) in [("../x", "plain components"), ("/etc/x", "plain components"), ("a//b", "plain components")]
        {
            let e = one_file(out.path(), name).unwrap_err().to_string();
            assert!(e.contains(why), "{name}: {e}");
        }
        let e = one_file(out.path(), "nodir/x").unwrap_err().to_string();
        assert!(e.contains("directory is not an entry"), "{e}");
        assert!(!out.path().parent().unwrap().join("x").exists());
        let mut twice = MAGIC.to_vec();
        for _ in 0..2 {
            twice.extend(head(&Entry { name: "a".into(), mode: 0o644, len: Some(0), from: PathBuf::new() }));
        }
        let mut u = Unpacker::new(&out.path().join("twice")).unwrap();
        assert!(u.feed(&twice).unwrap_err().to_string().contains("byte order"));
        let mut u = Unpacker::new(&out.path().join("junk")).unwrap();
        assert!(u.feed(b"not an image stream at all").unwrap_err().to_string().contains("does not start"));
    }

    fn one_file(out: &Path, name: &str) -> Result<(), ContentError> {
        let mut s = MAGIC.to_vec();
        s.extend(head(&Entry { name: name.into(), mode: 0o644, len: Some(1), from: PathBuf::new() }));
        s.extend(b"x");
        s.push(END);
        let root = out.join(format!("one-{}", name.replace('/', "_")));
        let mut u = Unpacker::new(&root)?;
        u.feed(&s)?;
        u.finish().map(drop)
    }
}
