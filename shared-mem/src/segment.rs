//! [`Segment`]: a named POSIX shared-memory file in `/dev/shm`, mapped `MAP_SHARED`.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use crate::error::with_context;
use crate::sys;

/// A shared-memory segment: the file `/dev/shm/<name>` (mode 0600), mapped read-write and
/// shared, or an anonymous shared mapping.
///
/// Dropping a `Segment` unmaps it but does **not** remove the name: the creator calls
/// [`Segment::unlink`] once every peer has opened it (or the launcher calls
/// [`unlink_job_segments`] after the job). Data structures inside the segment
/// ([`crate::format_ring`], [`crate::format_doorbell`]) hold an `Arc<Segment>` so the mapping
/// outlives them.
///
/// # Implementation notes
///
/// The name is a plain file in `/dev/shm`, which is what glibc's `shm_open("/<name>")`
/// creates, so tools (`ls /dev/shm`) and C peers see the same object.
pub struct Segment {
    /// Start of the mapping. Invariant: valid for reads and writes of `len` bytes (by this
    /// and other processes: only through atomics or raw pointers) until `drop`.
    ptr: NonNull<u8>,
    /// Length of the mapping in bytes; non-zero.
    len: usize,
    /// `/dev/shm/<name>`, or `None` for an anonymous mapping. Used in messages only.
    path: Option<PathBuf>,
}

// SAFETY: a `Segment` is a pointer to a mapping and its length; it hands out only a raw
// pointer, and all access through it is unsafe and synchronized by the structures built on
// top. Unmapping (drop) needs `&mut`/ownership, so no other thread can still use `self`.
unsafe impl Send for Segment {}
// SAFETY: as above; `&Segment` exposes only `len`, `as_ptr` and the path.
unsafe impl Sync for Segment {}

impl Segment {
    /// Creates `/dev/shm/<name>` (exclusively, mode 0600), sizes it to `len` bytes (zero
    /// filled) and maps it.
    ///
    /// `name` is like `braid-<jobid>-<rank>`: no `/`, not empty, at most 255 bytes.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] for a bad name or `len == 0`;
    /// [`io::ErrorKind::AlreadyExists`] if the name exists; any other OS error from `open`,
    /// `ftruncate` or `mmap`. Messages name the path.
    pub fn create(name: &str, len: usize) -> io::Result<Self> {
        let path = shm_path(name)?;
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot create {}: segment length 0", path.display()),
            ));
        }
        let ptr = sys::create_segment(&path, len)
            .map_err(|e| with_context(e, format!("create {} ({len} bytes)", path.display())))?;
        Ok(Self {
            ptr,
            len,
            path: Some(path),
        })
    }

    /// Maps the existing segment `/dev/shm/<name>`, all of it (size from `fstat`).
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::NotFound`] if it does not exist; [`io::ErrorKind::InvalidData`] if
    /// it has size 0 (its creator has not sized it yet); other OS errors. Messages name the
    /// path.
    pub fn open(name: &str) -> io::Result<Self> {
        let path = shm_path(name)?;
        let (ptr, len) = sys::open_segment(&path)
            .map_err(|e| with_context(e, format!("open {}", path.display())))?;
        Ok(Self {
            ptr,
            len,
            path: Some(path),
        })
    }

    /// A `MAP_SHARED | MAP_ANONYMOUS` segment of `len` bytes with no name: shared with
    /// threads, and with children forked after this call. For tests and benchmarks.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] if `len == 0`; OS errors from `mmap`.
    pub fn anonymous(len: usize) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "segment length 0",
            ));
        }
        let ptr = sys::anonymous_shared(len)
            .map_err(|e| with_context(e, format!("map {len} anonymous shared bytes")))?;
        Ok(Self {
            ptr,
            len,
            path: None,
        })
    }

    /// Removes `/dev/shm/<name>`. Existing mappings stay valid.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::NotFound`] if there is no such segment; other OS errors. Messages
    /// name the path.
    pub fn unlink(name: &str) -> io::Result<()> {
        let path = shm_path(name)?;
        std::fs::remove_file(&path)
            .map_err(|e| with_context(e, format!("unlink {}", path.display())))
    }

    /// Length of the mapping in bytes (never 0).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`: segments have a non-zero length. (For `clippy::len_without_is_empty`.)
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Start of the mapping, valid for `len()` bytes while `self` lives.
    ///
    /// Other processes may write the memory at any time: access it only through atomics or
    /// raw-pointer copies, never through `&`/`&mut` references to plain data.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// `/dev/shm/<name>`, or `None` for an anonymous segment.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

impl fmt::Debug for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segment")
            .field("path", &self.path)
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .finish()
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping made in the constructor, and `self` is
        // going away, so nothing can use the mapping through it any more (structures inside
        // hold an `Arc<Segment>` and so are already gone).
        let r = unsafe { sys::unmap(self.ptr, self.len) };
        debug_assert!(r.is_ok(), "munmap {:?}: {r:?}", self.path);
    }
}

/// Removes every `/dev/shm/<job_prefix>*`: the launcher's clean-up after a crashed job.
/// Returns how many names it removed. Names that vanish meanwhile are not counted.
///
/// # Errors
///
/// [`io::ErrorKind::InvalidInput`] if `job_prefix` is empty or contains `/` (that would
/// match other jobs' or the whole directory); errors reading `/dev/shm` or removing an
/// entry (messages name the path).
pub fn unlink_job_segments(job_prefix: &str) -> io::Result<usize> {
    if job_prefix.is_empty() || job_prefix.contains('/') || job_prefix.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad segment prefix {job_prefix:?}: must be non-empty, without '/'"),
        ));
    }
    let dir = Path::new(sys::SHM_DIR);
    let entries =
        std::fs::read_dir(dir).map_err(|e| with_context(e, format!("read {}", dir.display())))?;
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(|e| with_context(e, format!("read {}", dir.display())))?;
        if !entry
            .file_name()
            .as_encoded_bytes()
            .starts_with(job_prefix.as_bytes())
        {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(with_context(
                    e,
                    format!("unlink {}", entry.path().display()),
                ));
            }
        }
    }
    Ok(removed)
}

/// `/dev/shm/<name>` after checking `name`.
fn shm_path(name: &str) -> io::Result<PathBuf> {
    let bad = name.is_empty()
        || name.len() > 255
        || name.contains('/')
        || name.contains('\0')
        || name == "."
        || name == "..";
    if bad {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "bad segment name {name:?}: must be 1..=255 bytes, without '/' or NUL, \
                 not '.' or '..'"
            ),
        ));
    }
    Ok(Path::new(sys::SHM_DIR).join(name))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A name no other test (or concurrent test run) uses.
    fn name(tag: &str) -> String {
        format!("braid-shmtest-{}-{tag}", std::process::id())
    }

    #[test]
    fn create_open_unlink() {
        let n = name("cou");
        let a = Segment::create(&n, 10_000).unwrap();
        assert_eq!(a.len(), 10_000);
        let path = a.path().unwrap().to_owned();
        assert_eq!(path, Path::new("/dev/shm").join(&n));
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 10_000);
        // SAFETY: in bounds; no other user of the byte.
        unsafe { a.as_ptr().add(9_999).write(42) };
        let b = Segment::open(&n).unwrap();
        assert_eq!(b.len(), 10_000);
        // SAFETY: in bounds; written above, no concurrent writer.
        assert_eq!(unsafe { b.as_ptr().add(9_999).read() }, 42);
        Segment::unlink(&n).unwrap();
        assert!(!path.exists());
        // Mappings stay valid after unlink.
        // SAFETY: as above.
        unsafe { b.as_ptr().write(7) };
        // SAFETY: as above.
        assert_eq!(unsafe { a.as_ptr().read() }, 7);
        let e = Segment::open(&n).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains(&n), "{e}");
        assert_eq!(
            Segment::unlink(&n).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn create_is_exclusive() {
        let n = name("excl");
        let _a = Segment::create(&n, 4096).unwrap();
        let e = Segment::create(&n, 4096).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert!(e.to_string().contains(&format!("/dev/shm/{n}")), "{e}");
        let os = e
            .get_ref()
            .and_then(|e| e.downcast_ref::<crate::OsError>())
            .unwrap();
        assert_eq!(os.os_error().raw_os_error(), Some(libc::EEXIST));
        Segment::unlink(&n).unwrap();
    }

    #[test]
    fn bad_names_and_lengths() {
        for bad in ["", "a/b", "/x", ".", "..", "nul\0"] {
            let e = Segment::create(bad, 4096).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
        let long = "x".repeat(256);
        assert_eq!(
            Segment::open(&long).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        let n = name("zero");
        assert_eq!(
            Segment::create(&n, 0).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert!(!Path::new("/dev/shm").join(&n).exists());
    }

    #[test]
    fn open_rejects_unsized() {
        let n = name("unsized");
        let path = Path::new("/dev/shm").join(&n);
        std::fs::File::create(&path).unwrap();
        let e = Segment::open(&n).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn unlink_job_segments_removes_prefix_only() {
        let job = name("job");
        let other = name("jox");
        let segs: Vec<_> = (0..3)
            .map(|r| Segment::create(&format!("{job}-{r}"), 4096).unwrap())
            .collect();
        let keep = Segment::create(&other, 4096).unwrap();
        assert_eq!(unlink_job_segments(&job).unwrap(), 3);
        assert_eq!(unlink_job_segments(&job).unwrap(), 0);
        assert!(segs.iter().all(|s| !s.path().unwrap().exists()));
        assert!(keep.path().unwrap().exists());
        Segment::unlink(&other).unwrap();
        assert_eq!(
            unlink_job_segments("").unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            unlink_job_segments("a/").unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn anonymous_is_shared_between_threads() {
        let seg = std::sync::Arc::new(Segment::anonymous(4096).unwrap());
        assert!(seg.path().is_none());
        let s2 = seg.clone();
        // SAFETY: in bounds; the thread is joined before the read.
        std::thread::spawn(move || unsafe { s2.as_ptr().add(100).write(9) })
            .join()
            .unwrap();
        // SAFETY: in bounds; the writer was joined.
        assert_eq!(unsafe { seg.as_ptr().add(100).read() }, 9);
        assert_eq!(
            Segment::anonymous(0).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
