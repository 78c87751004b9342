//! A small state file updated in place, atomically, without allocating a new inode.
//!
//! Why: the usual atomic update (write a temporary file, rename it over the old one) allocates
//! an inode and frees one on every change. On an ext4 file system without a journal, each
//! allocation scans past every inode freed in the last minutes (`recently_deleted`), so a
//! thousand instances starting at once spent most of their time there. A slot file keeps
//! two copies of its content in one file and overwrites the older copy in place:
//!
//! ```text
//!   offset 0            slot_size            2 × slot_size
//!   │ slot 0             │ slot 1             │
//!   │ HSF1 seq len sum … │ HSF1 seq len sum … │     sum = FNV-1a 64 of seq, len and payload
//! ```
//!
//! A reader takes the valid slot (magic and checksum right) with the highest sequence number. A
//! writer holds an exclusive `flock` on the file, writes `seq + 1` into the *other* slot, and
//! leaves the current one alone, so a crash in the middle of a write (or a reader racing it)
//! finds a torn slot that fails its checksum and falls back to the previous content: every
//! update is all or nothing. Content that outgrows a slot is the one case that replaces the
//! file (temporary file and rename, with slots twice as large).
//!
//! Nothing is synced by default: after a power failure a file may hold an older content, or
//! none that is whole. A change that must never be undone (a raised fence) uses
//! [`update_synced`], which leaves it on disk in both slots, so no later torn write can fall
//! back past it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

const MAGIC: &[u8; 4] = b"HSF1";
/// magic, sequence (u64), payload length (u32), checksum (u64).
const HEADER: usize = 4 + 8 + 4 + 8;
const MIN_SLOT: usize = 512;

fn checksum(seq: u64, payload: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    for b in seq.to_le_bytes().iter().chain(len.to_le_bytes().iter()).chain(payload) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn encode_slot(seq: u64, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&checksum(seq, payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// `(seq, payload)` of a slot, if it is whole.
fn decode_slot(slot: &[u8]) -> Option<(u64, &[u8])> {
    if slot.len() < HEADER || &slot[..4] != MAGIC {
        return None;
    }
    let seq = u64::from_le_bytes(slot[4..12].try_into().ok()?);
    let len = u32::from_le_bytes(slot[12..16].try_into().ok()?) as usize;
    let sum = u64::from_le_bytes(slot[16..24].try_into().ok()?);
    let payload = slot.get(HEADER..HEADER.checked_add(len)?)?;
    (checksum(seq, payload) == sum).then_some((seq, payload))
}

/// The newest whole slot of a file's bytes: `(slot index, seq, payload)`. The slot whose
/// header claims the higher sequence is checked first; the other only if that one is torn.
fn newest(bytes: &[u8]) -> Option<(usize, u64, &[u8])> {
    let size = bytes.len() / 2;
    let slot = |i: usize| &bytes[i * size..(i + 1) * size];
    let claimed = |i: usize| slot(i).get(4..12).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes);
    let first = usize::from(claimed(1) > claimed(0));
    [first, 1 - first].into_iter().find_map(|i| decode_slot(slot(i)).map(|(seq, p)| (i, seq, p)))
}

fn corrupt(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{}: no whole slot (the file is corrupt)", path.display()))
}

/// The current content of the slot file at `path`; `Ok(None)` if there is no such file.
pub fn read(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    newest(&bytes).map(|(_, _, p)| Some(p.to_vec())).ok_or_else(|| corrupt(path))
}

/// A whole file image holding `payload` in both slots as sequence `seq`, slots large enough
/// for it to double. (Both, so that the first update in place still leaves a whole copy of it
/// in the other slot: see [`update_synced`].)
fn image(seq: u64, payload: &[u8]) -> Vec<u8> {
    let slot = (2 * (HEADER + payload.len())).next_power_of_two().max(MIN_SLOT);
    let mut out = encode_slot(seq, payload);
    out.resize(slot, 0);
    out.extend_from_within(..slot);
    out
}

/// Writes a new slot file at `path` holding `payload`, through a temporary file. With
/// `replace` false it never replaces an existing file (`AlreadyExists` then). With `sync`, the
/// file and its directory entry are on disk when it returns.
fn install(path: &Path, seq: u64, payload: &[u8], replace: bool, sync: bool) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let tmp =
        path.with_file_name(format!(".{name}.tmp-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    let written = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(&image(seq, payload))?;
        if sync {
            f.sync_data()?;
        }
        drop(f);
        if replace {
            fs::rename(&tmp, path)?;
        } else {
            fs::hard_link(&tmp, path)?;
        }
        if sync {
            File::open(path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))?.sync_all()?;
        }
        Ok(())
    })();
    if written.is_err() || !replace {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Creates the slot file at `path` with `payload`; fails if it exists. Meant for a directory
/// nobody else sees yet (the file is written in place, not through a temporary).
pub fn create(path: &Path, payload: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
    f.write_all(&image(1, payload))
}

/// What [`update`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Updated {
    /// `change` returned `None`: nothing was written.
    Unchanged,
    /// The file existed and now holds the new content.
    Written,
    /// There was no file; it was created with the new content.
    Created,
}

/// Changes the content of the slot file at `path` atomically: `change` gets the current
/// content (`None` when there is no file) and returns the new one, or `None` to leave it.
/// Concurrent updates (threads or processes) are serialised by an exclusive `flock`, so none
/// is lost. A missing file is created without ever replacing one created meanwhile.
pub fn update(path: &Path, change: impl FnMut(Option<&[u8]>) -> Option<Vec<u8>>) -> io::Result<Updated> {
    update_with(path, change, false)
}

/// [`update`] for a change that must never be undone, even by a power failure (a fence): the
/// new content is on disk in *both* slots when this returns. Written into the other slot and
/// synced first, then into the current one and synced again, so no moment leaves the file
/// without a whole slot; and since both slots then hold it, a later update torn by a crash
/// falls back to this content or a newer one, never to an older one. Costs two `fdatasync`s.
pub fn update_synced(path: &Path, change: impl FnMut(Option<&[u8]>) -> Option<Vec<u8>>) -> io::Result<Updated> {
    update_with(path, change, true)
}

fn update_with(
    path: &Path,
    mut change: impl FnMut(Option<&[u8]>) -> Option<Vec<u8>>,
    sync: bool,
) -> io::Result<Updated> {
    loop {
        let f = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let Some(new) = change(None) else { return Ok(Updated::Unchanged) };
                match install(path, 1, &new, false, sync) {
                    Ok(()) => return Ok(Updated::Created),
                    // Created meanwhile: update that one.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        f.lock()?;
        // Replaced (grown) while we waited for the lock: that file is the current one.
        match fs::metadata(path) {
            Ok(m) if m.ino() == f.metadata()?.ino() => {}
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
        return write_locked(path, &f, &mut change, sync);
    }
}

/// The part of [`update`] done under the lock.
fn write_locked(
    path: &Path,
    f: &File,
    change: &mut impl FnMut(Option<&[u8]>) -> Option<Vec<u8>>,
    sync: bool,
) -> io::Result<Updated> {
    let len = usize::try_from(f.metadata()?.len()).map_err(io::Error::other)?;
    let mut bytes = vec![0; len];
    f.read_exact_at(&mut bytes, 0)?;
    let (slot, seq, current) = newest(&bytes).ok_or_else(|| corrupt(path))?;
    let Some(new) = change(Some(current)) else { return Ok(Updated::Unchanged) };
    let size = len / 2;
    if HEADER + new.len() > size {
        install(path, seq + 1, &new, true, sync)?;
    } else {
        let other = 1 - slot;
        f.write_all_at(&encode_slot(seq + 1, &new), (other * size) as u64)?;
        if sync {
            f.sync_data()?;
            f.write_all_at(&encode_slot(seq + 2, &new), (slot * size) as u64)?;
            f.sync_data()?;
        }
    }
    Ok(Updated::Written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(path: &Path, content: &[u8]) -> Updated {
        update(path, |_| Some(content.to_vec())).unwrap()
    }

    #[test]
    fn updates_keep_one_inode_and_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("state");
        assert_eq!(read(&p).unwrap(), None);
        assert_eq!(set(&p, b"one"), Updated::Created);
        let ino = fs::metadata(&p).unwrap().ino();
        for i in 0..5 {
            let v = format!("value {i}");
            assert_eq!(set(&p, v.as_bytes()), Updated::Written);
            assert_eq!(read(&p).unwrap().unwrap(), v.as_bytes());
        }
        assert_eq!(fs::metadata(&p).unwrap().ino(), ino, "no new inode for an update that fits");
        assert_eq!(update(&p, |_| None).unwrap(), Updated::Unchanged);
        let big = vec![b'x'; 5000];
        assert_eq!(set(&p, &big), Updated::Written);
        assert_eq!(read(&p).unwrap().unwrap(), big);
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1, "no temporary left behind");
        assert!(create(&p, b"again").is_err(), "create never replaces");
    }

    #[test]
    fn a_torn_write_falls_back_to_the_previous_content() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("state");
        create(&p, b"first").unwrap();
        set(&p, b"second");
        // Tear the newest slot (slot 1: the second write) as a crash in mid-write would.
        let size = fs::metadata(&p).unwrap().len() / 2;
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(b"garbage", size + HEADER as u64).unwrap();
        assert_eq!(read(&p).unwrap().unwrap(), b"first");
        // The next update overwrites the torn slot and carries on from the whole one.
        update(&p, |cur| {
            assert_eq!(cur, Some(&b"first"[..]));
            Some(b"third".to_vec())
        })
        .unwrap();
        assert_eq!(read(&p).unwrap().unwrap(), b"third");
        fs::write(&p, b"not a slot file at all").unwrap();
        assert_eq!(read(&p).unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert!(update(&p, |_| Some(b"x".to_vec())).is_err(), "a corrupt file is not overwritten blindly");
    }

    /// Tears slot `i` of the file at `p` as a crash in mid-write would.
    fn tear(p: &Path, i: u64) {
        let size = fs::metadata(p).unwrap().len() / 2;
        OpenOptions::new().write(true).open(p).unwrap().write_all_at(b"garbage", i * size + HEADER as u64).unwrap();
    }

    #[test]
    fn a_synced_update_survives_any_later_torn_write() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("state");
        assert_eq!(update_synced(&p, |_| Some(b"first".to_vec())).unwrap(), Updated::Created);
        // A new file holds its content in both slots: a torn first update in place falls back.
        set(&p, b"second");
        tear(&p, 1);
        assert_eq!(read(&p).unwrap().unwrap(), b"first");
        tear(&p, 0);
        assert_eq!(read(&p).unwrap_err().kind(), io::ErrorKind::InvalidData);
        // After a synced update both slots hold it, whichever slot a later update tears.
        let p = tmp.path().join("fence");
        create(&p, b"old").unwrap();
        set(&p, b"older update");
        assert_eq!(update_synced(&p, |_| Some(b"raised".to_vec())).unwrap(), Updated::Written);
        for i in 0..2 {
            set(&p, b"later");
            tear(&p, i);
            assert_eq!(read(&p).unwrap().unwrap(), b"raised", "slot {i} torn");
            update(&p, |_| Some(b"raised".to_vec())).unwrap();
        }
        // One too large for its slots replaces the file, as large again in both slots.
        let big = vec![b'y'; 3000];
        update_synced(&p, |_| Some(big.clone())).unwrap();
        set(&p, b"after");
        tear(&p, 1);
        assert_eq!(read(&p).unwrap().unwrap(), big);
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 2, "no temporary left behind");
    }

    #[test]
    fn concurrent_updates_lose_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("counter");
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let p = p.clone();
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        update(&p, |cur| {
                            let n: usize = cur.map_or(0, |c| String::from_utf8_lossy(c).trim().parse().unwrap());
                            // The padding outgrows the slots now and then, so the replacing
                            // path races the in-place one.
                            Some(format!("{}{}", n + 1, " ".repeat(n % 700)).into_bytes())
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(String::from_utf8(read(&p).unwrap().unwrap()).unwrap().trim(), "800");
    }
}
