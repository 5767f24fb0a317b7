//! Types that can travel in messages, and the buffers that hold them.
//!
//! # Standard section(s)
//! MPI-4.1 §3.2.2 (message data), §5 (datatypes).
//!
//! # Not yet implemented
//! Derived datatypes (vector, indexed, struct) and the `Equivalence` derive macro.

/// A type whose values can be sent as their bytes and received from any bytes.
///
/// # Safety
/// The type must be plain old data: no padding bytes, no pointers, and every bit pattern of
/// its size must be a valid value.
pub unsafe trait Equivalence: Copy + 'static {}

macro_rules! equivalence {
    ($($t:ty),*) => { $(
        // SAFETY: primitive integers and floats have no padding and accept every bit pattern.
        unsafe impl Equivalence for $t {}
    )* };
}
equivalence!(u8, i8, u16, i16, u32, i32, u64, i64, u128, i128, usize, isize, f32, f64);

// SAFETY: arrays of plain old data are plain old data.
unsafe impl<T: Equivalence, const N: usize> Equivalence for [T; N] {}

/// Something that can be sent: a value, a slice, a vector or an array of [`Equivalence`]
/// types.
pub trait Buffer {
    /// The bytes to send.
    fn as_bytes(&self) -> &[u8];
}

/// Something that can be received into.
pub trait BufferMut {
    /// The bytes to receive into.
    fn as_bytes_mut(&mut self) -> &mut [u8];
    /// Size of one element; a received message must be a whole number of them.
    fn element_size(&self) -> usize;
}

fn bytes_of<T: Equivalence>(s: &[T]) -> &[u8] {
    // SAFETY: T is plain old data (Equivalence), so its memory is `size_of_val(s)` initialized
    // bytes; u8 has alignment 1.
    unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), size_of_val(s)) }
}

fn bytes_of_mut<T: Equivalence>(s: &mut [T]) -> &mut [u8] {
    // SAFETY: as in `bytes_of`; every bit pattern is a valid T, so any bytes written through
    // the view leave valid values.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<u8>(), size_of_val(s)) }
}

impl<T: Equivalence> Buffer for T {
    fn as_bytes(&self) -> &[u8] {
        bytes_of(std::slice::from_ref(self))
    }
}

impl<T: Equivalence> Buffer for [T] {
    fn as_bytes(&self) -> &[u8] {
        bytes_of(self)
    }
}

impl<T: Equivalence> Buffer for Vec<T> {
    fn as_bytes(&self) -> &[u8] {
        bytes_of(self)
    }
}

impl<T: Equivalence> BufferMut for T {
    fn as_bytes_mut(&mut self) -> &mut [u8] {
        bytes_of_mut(std::slice::from_mut(self))
    }
    fn element_size(&self) -> usize {
        size_of::<T>()
    }
}

impl<T: Equivalence> BufferMut for [T] {
    fn as_bytes_mut(&mut self) -> &mut [u8] {
        bytes_of_mut(self)
    }
    fn element_size(&self) -> usize {
        size_of::<T>()
    }
}

impl<T: Equivalence> BufferMut for Vec<T> {
    fn as_bytes_mut(&mut self) -> &mut [u8] {
        bytes_of_mut(self)
    }
    fn element_size(&self) -> usize {
        size_of::<T>()
    }
}

/// Builds a vector of `n` zeroed elements.
pub(crate) fn zeroed_vec<T: Equivalence>(n: usize) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(n);
    let bytes = n * size_of::<T>();
    // SAFETY: the allocation holds n elements; zero bytes are a valid T (Equivalence).
    unsafe {
        std::ptr::write_bytes(v.as_mut_ptr().cast::<u8>(), 0, bytes);
        v.set_len(n);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views() {
        let v = vec![1u32, 2];
        assert_eq!(v.as_bytes(), &[1, 0, 0, 0, 2, 0, 0, 0]);
        let mut x = 0u16;
        x.as_bytes_mut().copy_from_slice(&[1, 1]);
        assert_eq!(x, 257);
        assert_eq!(zeroed_vec::<f64>(3), vec![0.0; 3]);
    }
}
