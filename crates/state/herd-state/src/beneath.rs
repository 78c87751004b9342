//! Opening a server-side file that must lie below directories an operator allowed.
//!
//! Why one place: the reconciler reads `file://` extension files (`[extensions] file_roots`) and
//! the API reads server-side image imports (`[images] import_roots`) with the server's
//! privileges, on a path an API user names. Both open it the same guarded way: `openat2`
//! with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` relative to the root's descriptor (never
//! canonicalised first: a symlink swapped in between would win that race), non-blocking, and
//! only a regular file with one name.

use std::path::{Path, PathBuf};

/// Why a `file://` read was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum FileFetchError {
    #[error("reading server-side files is off on this server; an operator can allow directories with {setting} in herd.toml")]
    Off { setting: &'static str },
    #[error("{path} is not below a directory allowed by {setting} ({roots})")]
    NotBelowRoot { path: String, roots: String, setting: &'static str },
    #[error("{path} cannot be opened below its allowed root (symlinks and escapes are refused): {source}")]
    Open { path: String, source: std::io::Error },
    #[error("{path} is not a regular file (it is {kind})")]
    NotRegular { path: String, kind: &'static str },
    /// A second name for a file may point at one outside the root (the server's own key, say).
    #[error("{path} has {links} hard links; a file read by the server may have only one name")]
    HardLinked { path: String, links: u64 },
    #[error("is larger than the limit of {0} bytes")]
    TooBig(u64),
    #[error("reading {path} failed: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("timed out while reading")]
    TimedOut,
}

/// Why a path lies outside what the server may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outside {
    /// No roots are allowed: reading server-side files is off.
    Off,
    /// The path is below none of the roots (listed, comma-separated).
    NotBelowRoot { roots: String },
}

/// The allowed root `path` lies below and the path relative to it (empty: the root itself).
pub fn locate<'a>(roots: &'a [PathBuf], path: &'a Path) -> Result<(&'a Path, &'a Path), Outside> {
    if roots.is_empty() {
        return Err(Outside::Off);
    }
    roots.iter().find_map(|r| path.strip_prefix(r).ok().map(|rel| (r.as_path(), rel))).ok_or_else(|| {
        let list: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        Outside::NotBelowRoot { roots: list.join(", ") }
    })
}

/// Opens an allowed root as a handle to open paths beneath it. The root itself is the
/// operator's; it is still walked without following symlinks.
pub fn open_root(root: &Path) -> rustix::io::Result<std::os::fd::OwnedFd> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    rustix::fs::openat2(
        rustix::fs::CWD,
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
}

/// Opens `path` for reading below one of `roots` (see the module doc): the regular file, or why
/// not. `setting` names the config setting that holds `roots`, for errors.
pub fn open_beneath(setting: &'static str, roots: &[PathBuf], path: &Path) -> Result<std::fs::File, FileFetchError> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let shown = path.display().to_string();
    let (root, rel) = locate(roots, path).map_err(|e| match e {
        Outside::Off => FileFetchError::Off { setting },
        Outside::NotBelowRoot { roots } => FileFetchError::NotBelowRoot { path: shown.clone(), roots, setting },
    })?;
    if rel.as_os_str().is_empty() {
        return Err(FileFetchError::NotRegular { path: shown, kind: "a directory" });
    }
    let open_err = |e: rustix::io::Errno| FileFetchError::Open { path: shown.clone(), source: e.into() };
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    let root_fd = open_root(root).map_err(open_err)?;
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = rustix::fs::openat2(&root_fd, rel, flags, Mode::empty(), resolve).map_err(open_err)?;
    let st = rustix::fs::fstat(&fd).map_err(open_err)?;
    let kind = match rustix::fs::FileType::from_raw_mode(st.st_mode) {
        rustix::fs::FileType::RegularFile if st.st_nlink > 1 => {
            return Err(FileFetchError::HardLinked { path: shown, links: st.st_nlink as u64 })
        }
        rustix::fs::FileType::RegularFile => return Ok(std::fs::File::from(fd)),
        rustix::fs::FileType::Directory => "a directory",
        rustix::fs::FileType::Fifo => "a FIFO",
        rustix::fs::FileType::CharacterDevice | rustix::fs::FileType::BlockDevice => "a device",
        rustix::fs::FileType::Socket => "a socket",
        _ => "not a regular file",
    };
    Err(FileFetchError::NotRegular { path: shown, kind })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn opens_a_regular_file_below_a_root_and_refuses_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::write(root.join("a.txt"), b"hello").unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::os::unix::fs::symlink(root.join("a.txt"), root.join("link")).unwrap();
        let roots = vec![root.clone()];
        let mut text = String::new();
        open_beneath("s", &roots, &root.join("a.txt")).unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, "hello");
        assert!(matches!(open_beneath("s", &[], &root.join("a.txt")), Err(FileFetchError::Off { setting: "s" })));
        assert!(matches!(
            open_beneath("s", &roots, Path::new("/etc/passwd")),
            Err(FileFetchError::NotBelowRoot { .. })
        ));
        assert!(matches!(open_beneath("s", &roots, &root.join("sub")), Err(FileFetchError::NotRegular { .. })));
        assert_eq!(locate(&roots, &root.join("sub/x")), Ok((root.as_path(), Path::new("sub/x"))));
        assert_eq!(locate(&roots, &root), Ok((root.as_path(), Path::new(""))));
        assert_eq!(locate(&[], &root), Err(Outside::Off));
        let outside = locate(&roots, Path::new("/elsewhere")).unwrap_err();
        assert_eq!(outside, Outside::NotBelowRoot { roots: root.display().to_string() });
        assert!(matches!(open_beneath("s", &roots, &root.join("link")), Err(FileFetchError::Open { .. })));
        std::fs::hard_link(root.join("a.txt"), root.join("b.txt")).unwrap();
        assert!(matches!(
            open_beneath("s", &roots, &root.join("b.txt")),
            Err(FileFetchError::HardLinked { links: 2, .. })
        ));
    }
}
