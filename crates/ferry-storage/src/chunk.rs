//! Log bytes on their way out: in memory, or still in the segment file.
//!
//! A fetch that hands a socket a [`FileRegion`] lets the kernel send the bytes straight
//! from the page cache (`sendfile`), never copying them into the broker's memory. Segment
//! files only grow and a region never reaches past the published end of its segment, so
//! the bytes of a region do not change while it waits to be sent; an open handle keeps
//! them readable even if retention deletes the file meanwhile.

use std::fs::File;
use std::sync::Arc;

use bytes::Bytes;

use crate::fsutil::read_exact_at_new;

/// A run of whole batches of a log.
#[derive(Clone, Debug)]
pub enum Chunk {
    /// Read into memory.
    Memory(Bytes),
    /// Not read: a region of a segment file.
    File(FileRegion),
}

impl Chunk {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Chunk::Memory(bytes) => bytes.len(),
            Chunk::File(region) => region.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes, read from the file if they are not in memory yet.
    pub fn into_bytes(self) -> std::io::Result<Bytes> {
        match self {
            Chunk::Memory(bytes) => Ok(bytes),
            Chunk::File(region) => region.read(),
        }
    }
}

impl Default for Chunk {
    fn default() -> Self {
        Chunk::Memory(Bytes::new())
    }
}

impl From<Bytes> for Chunk {
    fn from(bytes: Bytes) -> Self {
        Chunk::Memory(bytes)
    }
}

/// `len` bytes of a segment file from `position`.
#[derive(Clone, Debug)]
pub struct FileRegion {
    file: Arc<File>,
    position: u64,
    len: usize,
}

impl FileRegion {
    /// `len` bytes of `file` from `position`. The log hands out regions only of whole
    /// batches below a segment's published end; a sender must still expect the file to
    /// end early (a damaged disk) and fail rather than send less.
    pub fn new(file: Arc<File>, position: u64, len: usize) -> FileRegion {
        FileRegion {
            file,
            position,
            len,
        }
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Where the region starts in the file.
    pub fn position(&self) -> u64 {
        self.position
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads the region into memory.
    pub fn read(&self) -> std::io::Result<Bytes> {
        read_exact_at_new(&self.file, self.len, self.position).map(Bytes::from)
    }
}
