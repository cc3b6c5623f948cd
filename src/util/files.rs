//! Reading inputs and writing outputs safely: inputs must be regular files (not a directory, a device such as
//! `/dev/zero`, or a FIFO) and are read up to a cap; outputs are written through a uniquely named temporary file
//! and a rename, and the temporary file is removed when anything fails.
//!
//! The functions return `std::io::Error`s with a readable message; callers attach the path in their own error type.

use std::io::{Error, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Cap on a small JSON or text file (model configs, scheduler config, `vocab.json`, `merges.txt`,
/// `tokenizer.json`): the largest real one, SD's `tokenizer.json`, is 3.6 MB.
pub const CONFIG_MAX_BYTES: u64 = 64 << 20;
/// Cap on a COCO annotations or detections JSON (COCO 2017 train instances are 470 MB).
pub const DATA_JSON_MAX_BYTES: u64 = 4 << 30;

fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// The size of `path` if it is a regular file (symbolic links are followed), else an error saying what it is.
pub fn regular_file_len(path: &Path) -> std::io::Result<u64> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, format!("is {}, not a regular file", kind_of(&meta))));
    }
    Ok(meta.len())
}

/// Reads a regular file of at most `max_bytes` bytes (`None`: no cap beyond the file's own size).
pub fn read_input(path: &Path, max_bytes: Option<u64>) -> std::io::Result<Vec<u8>> {
    let len = regular_file_len(path)?;
    let cap = max_bytes.unwrap_or(u64::MAX);
    if len > cap {
        return Err(Error::new(ErrorKind::InvalidData, format!("{len} bytes, over the {cap}-byte cap for this kind of file")));
    }
    let f = std::fs::File::open(path)?;
    let mut bytes = Vec::with_capacity(len as usize);
    // Read at most one byte past the size seen, so a file that grows meanwhile cannot run away.
    f.take(len.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > len || bytes.len() as u64 > cap {
        return Err(Error::new(ErrorKind::InvalidData, "the file grew while it was read"));
    }
    Ok(bytes)
}

/// [`read_input`] as UTF-8 text.
pub fn read_text(path: &Path, max_bytes: Option<u64>) -> std::io::Result<String> {
    String::from_utf8(read_input(path, max_bytes)?).map_err(|e| Error::new(ErrorKind::InvalidData, format!("not UTF-8: {e}")))
}

static TMP_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A temporary name beside `path`, unique to this process and call: `.{name}.tmp-{pid}-{n}`.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// Writes to a temporary file beside `path` with `write`, syncs it and renames it over `path`, so a reader never
/// sees a half-written file; on any failure the temporary file is removed.
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&Path) -> std::io::Result<()>) -> std::io::Result<()> {
    let tmp = temp_path(path);
    let result = (|| {
        write(&tmp)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// [`write_atomic_with`] for bytes in memory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, |tmp| {
        let mut f = std::fs::File::create(tmp)?;
        f.write_all(bytes)
    })
}

/// `path` made absolute and canonical as far as it exists (an output file that does not exist yet is its
/// canonical parent joined with its name).
pub fn canonical(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
            canonical(parent).join(name)
        }
        _ => path.to_path_buf(),
    }
}

/// Whether `a` and `b` name the same file (after following links and `..`).
pub fn same_file(a: &Path, b: &Path) -> bool {
    canonical(a) == canonical(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_devices_dirs_and_oversized_files() {
        let e = read_input(Path::new("/dev/zero"), None).unwrap_err().to_string();
        assert!(e.contains("character device"), "{e}");
        let e = read_input(Path::new("/tmp"), None).unwrap_err().to_string();
        assert!(e.contains("directory"), "{e}");
        let dir = std::env::temp_dir().join(format!("instagen_files_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.json");
        write_atomic(&p, b"0123456789").unwrap();
        assert_eq!(read_input(&p, Some(10)).unwrap(), b"0123456789");
        let e = read_input(&p, Some(9)).unwrap_err().to_string();
        assert!(e.contains("10 bytes") && e.contains("9-byte cap"), "{e}");
        assert!(same_file(&p, &dir.join("../").join(dir.file_name().unwrap()).join("a.json")));
        assert!(same_file(&dir.join("new.json"), &dir.join(".").join("new.json")));
        assert!(!same_file(&p, &dir.join("new.json")));
        // Two temp names in a row differ and carry the process id.
        let (t1, t2) = (temp_path(&p), temp_path(&p));
        assert_ne!(t1, t2);
        assert!(t1.to_string_lossy().contains(&std::process::id().to_string()));
        // A failed rename (onto a directory) leaves no temp file behind.
        std::fs::create_dir_all(dir.join("d/x")).unwrap();
        assert!(write_atomic(&dir.join("d"), b"x").is_err());
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.iter().all(|n| !n.to_string_lossy().contains(".tmp-")), "{left:?}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
