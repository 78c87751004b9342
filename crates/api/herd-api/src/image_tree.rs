//! Process-driver images: a directory tree put into the gallery, from an uploaded tar archive or
//! from a directory the operator lets the server read.
//!
//! Why: a process image is a directory, and the server runs as root. It must never copy a tree
//! from a path of the client's choosing, follow a link out of it, read a FIFO or a device, or
//! grow without bound. So the CLI packs the directory as a tar archive and uploads it like a
//! disk; the server unpacks it here. An operator may instead let the server read directories
//! below `[images] import_roots`: they are walked by file descriptor (`openat2` beneath the root,
//! then `O_NOFOLLOW` at every step, with `fstat` on what was opened), never by re-resolving a
//! path. Either way the same rules hold:
//!
//! - only regular files and directories land in the gallery; a symbolic link, a hard link, a
//!   device, a FIFO, a socket or a sparse file is refused by name;
//! - a file with more than one hard link is refused (it may be a second name for a file outside
//!   the root, such as the server's own key);
//! - permissions keep their `rwx` bits only (no set-uid, set-gid or sticky bit);
//! - an entry may not leave the image (`..` or an absolute path);
//! - the total size, the entry count and the depth are capped while copying.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

/// How much one image tree may hold.
#[derive(Debug, Clone, Copy)]
pub struct TreeLimits {
    /// Bytes of file content in all.
    pub max_bytes: u64,
    /// Files and directories in all.
    pub max_entries: u64,
    /// Directories nested below the image's top.
    pub max_depth: usize,
}

impl TreeLimits {
    pub fn with_max_bytes(max_bytes: u64) -> Self {
        Self { max_bytes, max_entries: 100_000, max_depth: 64 }
    }
}

/// Why a tree was refused or could not be copied. Every variant names the entry.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("'{path}' is {kind}; an image holds only regular files and directories")]
    NotAllowed { path: String, kind: &'static str },
    #[error("'{path}' has {links} hard links; an image file may have only one name (copy it instead of linking it)")]
    HardLinked { path: String, links: u64 },
    #[error("'{path}' leaves the image (an absolute path or '..')")]
    Escapes { path: String },
    #[error("the image holds more than {max} bytes (the server's [images] max_upload_gib)")]
    TooLarge { max: u64 },
    #[error("the image holds more than {max} files and directories")]
    TooManyEntries { max: u64 },
    #[error("'{path}' is nested more than {max} directories deep")]
    TooDeep { path: String, max: usize },
    #[error("the upload is not a readable tar archive: {source}")]
    NotTar {
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl TreeError {
    fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        TreeError::Io { what: what.into(), source }
    }

    /// True when the tree itself is at fault (a 400), false for the server's own I/O (a 500).
    pub fn is_input(&self) -> bool {
        !matches!(self, TreeError::Io { .. })
    }
}

/// What was written.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TreeSummary {
    pub files: u64,
    pub directories: u64,
    pub bytes: u64,
}

/// Counts entries and bytes against the limits while a tree is written.
struct Budget {
    limits: TreeLimits,
    used: TreeSummary,
}

impl Budget {
    fn entry(&mut self, dir: bool) -> Result<(), TreeError> {
        if self.used.files + self.used.directories >= self.limits.max_entries {
            return Err(TreeError::TooManyEntries { max: self.limits.max_entries });
        }
        if dir {
            self.used.directories += 1;
        } else {
            self.used.files += 1;
        }
        Ok(())
    }

    /// Copies `from` into a new file at `to` (mode `mode & 0o777`), within the byte budget.
    fn copy(&mut self, from: &mut impl Read, to: &Path, mode: u32) -> Result<(), TreeError> {
        let shown = to.display().to_string();
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode & 0o777)
            .open(to)
            .map_err(|e| TreeError::io(format!("creating {shown}"), e))?;
        let left = self.limits.max_bytes.saturating_sub(self.used.bytes);
        let n = std::io::copy(&mut from.take(left + 1), &mut out)
            .map_err(|e| TreeError::io(format!("writing {shown}"), e))?;
        if n > left {
            return Err(TreeError::TooLarge { max: self.limits.max_bytes });
        }
        out.flush().map_err(|e| TreeError::io(format!("writing {shown}"), e))?;
        self.used.bytes += n;
        Ok(())
    }
}

fn make_dir(path: &Path, mode: u32) -> Result<(), TreeError> {
    std::fs::DirBuilder::new()
        .mode(mode & 0o777 | 0o700)
        .create(path)
        .map_err(|e| TreeError::io(format!("creating {}", path.display()), e))
}

/// The entry's path inside the image, checked: relative, no `..`. `None` for the top itself.
fn inside(path: &Path) -> Result<Option<PathBuf>, TreeError> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(TreeError::Escapes { path: path.display().to_string() })
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Unpacks the tar archive at `archive` into the new directory `dest` (which must not exist).
pub fn unpack_tar(archive: &Path, dest: &Path, limits: TreeLimits) -> Result<TreeSummary, TreeError> {
    let file = std::fs::File::open(archive).map_err(|e| TreeError::io("opening the uploaded archive", e))?;
    let mut tar = tar::Archive::new(std::io::BufReader::new(file));
    make_dir(dest, 0o755)?;
    let mut budget = Budget { limits, used: TreeSummary::default() };
    let not_tar = |source| TreeError::NotTar { source };
    for entry in tar.entries().map_err(not_tar)? {
        let mut entry = entry.map_err(not_tar)?;
        let raw = entry.path().map_err(not_tar)?.into_owned();
        let shown = raw.display().to_string();
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().unwrap_or(0o644);
        let refuse = |kind| Err(TreeError::NotAllowed { path: shown.clone(), kind });
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Directory => {}
            // Archive-wide metadata (e.g. `git archive`'s comment): not an entry of the image.
            tar::EntryType::XGlobalHeader => continue,
            tar::EntryType::Symlink => return refuse("a symbolic link"),
            tar::EntryType::Link => return refuse("a hard link"),
            tar::EntryType::Char | tar::EntryType::Block => return refuse("a device"),
            tar::EntryType::Fifo => return refuse("a FIFO"),
            tar::EntryType::GNUSparse => return refuse("a sparse file"),
            _ => return refuse("an entry of an unsupported type"),
        }
        let Some(rel) = inside(&raw)? else { continue };
        let depth = rel.components().count();
        if depth > limits.max_depth {
            return Err(TreeError::TooDeep { path: shown, max: limits.max_depth });
        }
        let to = dest.join(&rel);
        // Parents named only by a file's path are created as plain directories. Nothing but
        // directories and regular files is ever created, so no step can lead outside `dest`.
        if let Some(parent) = to.parent() {
            if !parent.is_dir() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(parent)
                    .map_err(|e| TreeError::io(format!("creating {}", parent.display()), e))?;
            }
        }
        if kind == tar::EntryType::Directory {
            budget.entry(true)?;
            if !to.is_dir() {
                make_dir(&to, mode)?;
            }
        } else {
            budget.entry(false)?;
            budget.copy(&mut entry, &to, mode)?;
        }
    }
    Ok(budget.used)
}

/// Copies the server-side directory `path`, below one of `roots`, into the new directory `dest`.
/// `setting` names the setting that holds `roots`, for errors.
pub fn copy_beneath(
    setting: &'static str,
    roots: &[PathBuf],
    path: &Path,
    dest: &Path,
    limits: TreeLimits,
) -> Result<TreeSummary, BeneathError> {
    use herd_state::beneath::Outside;
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let shown = path.display().to_string();
    let (root, rel) = herd_state::beneath::locate(roots, path).map_err(|e| match e {
        Outside::Off => BeneathError::Off { setting },
        Outside::NotBelowRoot { roots } => BeneathError::NotBelowRoot { path: shown.clone(), roots, setting },
    })?;
    let open_err = |e: rustix::io::Errno| BeneathError::Tree(TreeError::io(format!("opening {shown}"), e.into()));
    let root_fd = herd_state::beneath::open_root(root).map_err(open_err)?;
    let rel = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
    let top = rustix::fs::openat2(
        &root_fd,
        rel,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(|e| match e {
        rustix::io::Errno::NOTDIR => BeneathError::NotADirectory { path: shown.clone() },
        other => open_err(other),
    })?;
    make_dir(dest, 0o755)?;
    let mut budget = Budget { limits, used: TreeSummary::default() };
    copy_dir_fd(&top, path, dest, 0, &mut budget)?;
    Ok(budget.used)
}

/// Why a server-side directory was not imported.
#[derive(Debug, thiserror::Error)]
pub enum BeneathError {
    #[error("reading directories on the server is off: it reads only below {setting} (none are set)")]
    Off { setting: &'static str },
    #[error("'{path}' is not below {setting} ({roots})")]
    NotBelowRoot { path: String, roots: String, setting: &'static str },
    #[error("'{path}' is not a directory")]
    NotADirectory { path: String },
    #[error(transparent)]
    Tree(#[from] TreeError),
}

fn file_kind(mode: u32) -> (&'static str, bool) {
    use rustix::fs::FileType;
    match FileType::from_raw_mode(mode) {
        FileType::RegularFile => ("a regular file", true),
        FileType::Directory => ("a directory", true),
        FileType::Symlink => ("a symbolic link", false),
        FileType::Fifo => ("a FIFO", false),
        FileType::CharacterDevice | FileType::BlockDevice => ("a device", false),
        FileType::Socket => ("a socket", false),
        FileType::Unknown => ("of an unknown type", false),
    }
}

/// Copies the open directory `dir` (shown as `shown`) into `dest`, one entry at a time: each is
/// opened `O_PATH|O_NOFOLLOW` relative to `dir`, checked with `fstat`, then reopened for reading
/// (again without following) and checked to be the same inode, so nothing can be swapped in.
fn copy_dir_fd(
    dir: &rustix::fd::OwnedFd,
    shown: &Path,
    dest: &Path,
    depth: usize,
    budget: &mut Budget,
) -> Result<(), TreeError> {
    use rustix::fs::{Mode, OFlags};
    if depth > budget.limits.max_depth {
        return Err(TreeError::TooDeep { path: shown.display().to_string(), max: budget.limits.max_depth });
    }
    let io = |what: String| move |e: rustix::io::Errno| TreeError::io(what, e.into());
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir).map_err(io(format!("listing {}", shown.display())))? {
        let entry = entry.map_err(io(format!("listing {}", shown.display())))?;
        let name = entry.file_name().to_owned();
        if name.as_bytes() != b"." && name.as_bytes() != b".." {
            names.push(name);
        }
    }
    names.sort();
    for name in names {
        let file_name = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name.as_bytes());
        let here = shown.join(file_name);
        let path_s = here.display().to_string();
        let to = dest.join(file_name);
        let nofollow = OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let handle = rustix::fs::openat(dir, name.as_c_str(), OFlags::PATH | nofollow, Mode::empty())
            .map_err(io(format!("opening {path_s}")))?;
        let st = rustix::fs::fstat(&handle).map_err(io(format!("reading {path_s}")))?;
        let (kind, allowed) = file_kind(st.st_mode);
        if !allowed {
            return Err(TreeError::NotAllowed { path: path_s, kind });
        }
        let is_dir = rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory;
        if !is_dir && st.st_nlink > 1 {
            return Err(TreeError::HardLinked { path: path_s, links: st.st_nlink as u64 });
        }
        let flags = if is_dir {
            OFlags::RDONLY | OFlags::DIRECTORY
        } else {
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY
        };
        let fd = rustix::fs::openat(dir, name.as_c_str(), flags | nofollow, Mode::empty())
            .map_err(io(format!("opening {path_s}")))?;
        let again = rustix::fs::fstat(&fd).map_err(io(format!("reading {path_s}")))?;
        if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino) {
            return Err(TreeError::io(
                format!("copying {path_s}"),
                std::io::Error::other("it was replaced while being copied"),
            ));
        }
        let mode = st.st_mode & 0o777;
        budget.entry(is_dir)?;
        if is_dir {
            make_dir(&to, mode)?;
            copy_dir_fd(&fd, &here, &to, depth + 1, budget)?;
        } else {
            let mut f = std::fs::File::from(fd);
            budget.copy(&mut f, &to, mode)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn limits() -> TreeLimits {
        TreeLimits::with_max_bytes(1 << 20)
    }

    fn tar_of(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> tempfile::NamedTempFile {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        let bytes = b.into_inner().unwrap();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&bytes).unwrap();
        f
    }

    fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, body: &[u8], mode: u32) {
        let mut h = header(tar::EntryType::Regular, body.len() as u64, mode);
        b.append_data(&mut h, path, body).unwrap();
    }

    #[test]
    fn a_tree_of_files_and_directories_unpacks_with_its_modes_and_no_special_bits() {
        let t = tar_of(|b| {
            let mut d = header(tar::EntryType::Directory, 0, 0o755);
            b.append_data(&mut d, "www/", std::io::empty()).unwrap();
            file(b, "init", b"#!/bin/sh\n", 0o4755);
            file(b, "www/index.html", b"hello", 0o644);
            file(b, "a/b/c.txt", b"deep", 0o600);
        });
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("img");
        let s = unpack_tar(t.path(), &dest, limits()).unwrap();
        assert_eq!(s, TreeSummary { files: 3, directories: 1, bytes: 10 + 5 + 4 });
        let mode = |p: &str| std::fs::metadata(dest.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("init"), 0o755, "the set-uid bit is dropped");
        assert_eq!(mode("a/b/c.txt"), 0o600);
        assert_eq!(std::fs::read_to_string(dest.join("www/index.html")).unwrap(), "hello");
    }

    #[test]
    fn links_devices_fifos_and_escapes_are_refused_by_name() {
        let cases: Vec<(tar::EntryType, &str, &str)> = vec![
            (tar::EntryType::Symlink, "etc-link", "a symbolic link"),
            (tar::EntryType::Link, "hard", "a hard link"),
            (tar::EntryType::Char, "null", "a device"),
            (tar::EntryType::Block, "sda", "a device"),
            (tar::EntryType::Fifo, "pipe", "a FIFO"),
        ];
        for (kind, name, says) in cases {
            let t = tar_of(|b| {
                let mut h = header(kind, 0, 0o644);
                if matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link) {
                    h.set_link_name("/etc/shadow").unwrap();
                }
                b.append_data(&mut h, name, std::io::empty()).unwrap();
            });
            let out = tempfile::tempdir().unwrap();
            let e = unpack_tar(t.path(), &out.path().join("img"), limits()).unwrap_err().to_string();
            assert!(e.contains(name) && e.contains(says), "{kind:?}: {e}");
        }
        // `..` cannot be written through the builder's checked API; write the name raw.
        let t = tar_of(|b| {
            let mut h = header(tar::EntryType::Regular, 1, 0o644);
            h.as_gnu_mut().unwrap().name[..12].copy_from_slice(b"../escape.sh");
            h.set_cksum();
            b.append(&h, &b"x"[..]).unwrap();
        });
        let out = tempfile::tempdir().unwrap();
        let e = unpack_tar(t.path(), &out.path().join("img"), limits()).unwrap_err();
        assert!(matches!(e, TreeError::Escapes { .. }), "{e}");
        assert!(!out.path().join("escape.sh").exists());
    }

    #[test]
    fn the_size_and_entry_caps_hold_while_unpacking() {
        let t = tar_of(|b| file(b, "big", &vec![7u8; 4096], 0o644));
        let out = tempfile::tempdir().unwrap();
        let small = TreeLimits { max_bytes: 4095, ..limits() };
        assert!(matches!(unpack_tar(t.path(), &out.path().join("a"), small), Err(TreeError::TooLarge { max: 4095 })));
        let t = tar_of(|b| (0..5).for_each(|i| file(b, &format!("f{i}"), b"", 0o644)));
        let few = TreeLimits { max_entries: 4, ..limits() };
        assert!(matches!(unpack_tar(t.path(), &out.path().join("b"), few), Err(TreeError::TooManyEntries { max: 4 })));
    }

    #[test]
    fn garbage_is_not_a_tar() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[0xffu8; 1024]).unwrap();
        let out = tempfile::tempdir().unwrap();
        let e = unpack_tar(f.path(), &out.path().join("img"), limits()).unwrap_err();
        assert!(matches!(e, TreeError::NotTar { .. }), "{e}");
    }

    #[test]
    fn a_server_directory_is_copied_only_below_a_root_and_without_links() {
        let root = tempfile::tempdir().unwrap();
        let src = root.path().join("img");
        std::fs::create_dir_all(src.join("www")).unwrap();
        std::fs::write(src.join("init"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(src.join("init"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(src.join("www/index.html"), "hi").unwrap();
        let roots = vec![root.path().to_path_buf()];
        let out = tempfile::tempdir().unwrap();
        let s = copy_beneath("[images] import_roots", &roots, &src, &out.path().join("a"), limits()).unwrap();
        assert_eq!(s, TreeSummary { files: 2, directories: 1, bytes: 12 });
        assert_eq!(std::fs::read_to_string(out.path().join("a/www/index.html")).unwrap(), "hi");

        // Off without roots; refused outside them.
        let e = copy_beneath("[images] import_roots", &[], &src, &out.path().join("b"), limits()).unwrap_err();
        assert!(matches!(e, BeneathError::Off { .. }), "{e}");
        let elsewhere = tempfile::tempdir().unwrap();
        let e = copy_beneath("[images] import_roots", &roots, elsewhere.path(), &out.path().join("c"), limits())
            .unwrap_err();
        assert!(matches!(e, BeneathError::NotBelowRoot { .. }), "{e}");

        // A symlink inside (to a secret outside) and a hard link are refused by name.
        let secret = elsewhere.path().join("secret.key");
        std::fs::write(&secret, "k").unwrap();
        std::os::unix::fs::symlink(&secret, src.join("www/key")).unwrap();
        let e = copy_beneath("[images] import_roots", &roots, &src, &out.path().join("d"), limits()).unwrap_err();
        assert!(e.to_string().contains("www/key") && e.to_string().contains("symbolic link"), "{e}");
        std::fs::remove_file(src.join("www/key")).unwrap();
        let linked = root.path().join("other");
        std::fs::write(&linked, "x").unwrap();
        std::fs::hard_link(&linked, src.join("www/second-name")).unwrap();
        let e = copy_beneath("[images] import_roots", &roots, &src, &out.path().join("e"), limits()).unwrap_err();
        assert!(e.to_string().contains("second-name") && e.to_string().contains("2 hard links"), "{e}");
        std::fs::remove_file(src.join("www/second-name")).unwrap();

        // A directory reached through a symlink is not followed either.
        std::os::unix::fs::symlink(elsewhere.path(), root.path().join("via-link")).unwrap();
        let e = copy_beneath(
            "[images] import_roots",
            &roots,
            &root.path().join("via-link"),
            &out.path().join("f"),
            limits(),
        )
        .unwrap_err();
        assert!(!out.path().join("f/secret.key").exists(), "{e}");

        // A FIFO is refused without blocking.
        rustix::fs::mknodat(
            rustix::fs::CWD,
            src.join("pipe"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let e = copy_beneath("[images] import_roots", &roots, &src, &out.path().join("g"), limits()).unwrap_err();
        assert!(e.to_string().contains("pipe") && e.to_string().contains("FIFO"), "{e}");
    }
}
