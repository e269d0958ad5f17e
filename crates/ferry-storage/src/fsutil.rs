//! Small filesystem helpers: error context, atomic replace, directory fsync.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use crate::{Result, StorageError};

/// Attaches the path to an I/O error.
pub(crate) trait IoContext<T> {
    /// Maps an `io::Error` to [`StorageError::Io`] naming `path`.
    fn at(self, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &Path) -> Result<T> {
        self.map_err(|source| StorageError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// fsyncs a directory, making creations, renames and deletions inside it durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Makes everything written to the filesystem holding `dir` durable (data, metadata and
/// directory entries of every file) with one `syncfs`: a single journal commit, where an
/// fsync per file would commit once per file.
pub(crate) fn sync_filesystem(dir: &Path) -> Result<()> {
    let handle = File::open(dir).at(dir)?;
    rustix::fs::syncfs(&handle)
        .map_err(std::io::Error::from)
        .at(dir)
}

/// Starts the kernel writing `len` bytes of `file` from `offset` back to disk and returns
/// without waiting for them (`sync_file_range(SYNC_FILE_RANGE_WRITE)`). It makes nothing
/// durable: no metadata is committed and no disk cache is flushed; an fsync still must.
/// (rustix does not wrap this call.)
#[allow(unsafe_code)]
pub(crate) fn start_writeback(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(std::io::ErrorKind::InvalidInput.into());
    };
    // SAFETY: the call reads and writes no memory of this process; the descriptor stays
    // open for the call because `file` is borrowed.
    let rc = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Writes `bytes` to the temporary sibling of `path` ([`tmp_path`]), fsynced if `sync`.
/// Renaming it over `path` completes the replacement (see [`write_atomic`]).
pub(crate) fn write_tmp(path: &Path, bytes: &[u8], sync: bool) -> Result<std::path::PathBuf> {
    let tmp = tmp_path(path);
    let mut file = File::create(&tmp).at(&tmp)?;
    file.write_all(bytes).at(&tmp)?;
    if sync {
        file.sync_all().at(&tmp)?;
    }
    Ok(tmp)
}

/// Replaces `path` with `bytes` atomically and durably: write a temporary file, fsync it,
/// rename it over `path`, fsync the directory. A crash leaves the old or the new content.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = write_tmp(path, bytes, true)?;
    std::fs::rename(&tmp, path).at(path)?;
    if let Some(dir) = path.parent() {
        fsync_dir(dir)?;
    }
    Ok(())
}

/// The temporary sibling used by [`write_atomic`].
pub(crate) fn tmp_path(path: &Path) -> std::path::PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Removes a file, treating "already gone" as success.
pub(crate) fn remove_file_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).at(path),
        _ => Ok(()),
    }
}

/// Milliseconds since the Unix epoch, by the system clock.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Most buffers handed to one `pwritev` (Linux's IOV_MAX is 1024).
const IO_SLICES_MAX: usize = 1024;

/// Reads exactly `len` bytes at `position` into a new buffer without zeroing it first:
/// on the fetch path zeroing the buffer would cost as much as the read itself.
pub(crate) fn read_exact_at_new(
    file: &File,
    len: usize,
    position: u64,
) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        let at = position + buf.len() as u64;
        // Reads into the spare capacity and extends the length by what was read (the
        // allocation may be larger than asked: anything past `len` is cut off below).
        let read = rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buf), at)?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    buf.truncate(len);
    Ok(buf)
}

/// Writes all of `slices`, back to back, at `position` with vectored positioned writes.
pub(crate) fn write_all_vectored_at(
    file: &File,
    slices: &[&[u8]],
    mut position: u64,
) -> std::io::Result<()> {
    let (mut index, mut skip) = (0usize, 0usize);
    while index < slices.len() {
        let batch: Vec<std::io::IoSlice<'_>> = slices[index..]
            .iter()
            .take(IO_SLICES_MAX)
            .enumerate()
            .map(|(i, s)| std::io::IoSlice::new(if i == 0 { &s[skip..] } else { s }))
            .collect();
        let mut written = rustix::io::pwritev(file, &batch, position)?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        position += written as u64;
        while written > 0 {
            let left = slices[index].len() - skip;
            if written >= left {
                written -= left;
                index += 1;
                skip = 0;
            } else {
                skip += written;
                written = 0;
            }
        }
        while index < slices.len() && slices[index].len() == skip {
            index += 1;
            skip = 0;
        }
    }
    Ok(())
}
