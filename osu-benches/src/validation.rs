//! The data-validation pattern of OSU 7 (`-c`): send buffers are filled with a pattern that
//! depends on the message size and the iteration, receive buffers are zeroed before each
//! iteration and compared with the expected pattern after it.

/// The OSU 7 multiplier for `MPI_CHAR` validation data (`CHAR_VALIDATION_MULTIPLIER`).
const CHAR_MULTIPLIER: usize = 7;

/// The expected byte at `index` of a `size`-byte message sent in iteration `iter`:
/// `(7 * (index + 1) + size + iter) mod 256`, as OSU's `validate_data` computes it for chars.
#[must_use]
pub fn pattern_byte(index: usize, size: usize, iter: usize) -> u8 {
    // Truncation to a byte is the point: OSU stores the value into a `char`.
    (CHAR_MULTIPLIER
        .wrapping_mul(index + 1)
        .wrapping_add(size)
        .wrapping_add(iter)
        & 0xff) as u8
}

/// Fills `buf` with the pattern for a `buf.len()`-byte message of iteration `iter`.
pub fn fill(buf: &mut [u8], iter: usize) {
    let size = buf.len();
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(i, size, iter);
    }
}

/// Returns whether `buf` holds exactly the pattern for iteration `iter`.
#[must_use]
pub fn check(buf: &[u8], iter: usize) -> bool {
    let size = buf.len();
    buf.iter()
        .enumerate()
        .all(|(i, &b)| b == pattern_byte(i, size, iter))
}

/// Multiplier that spreads the salts of [`fill_salted`] over the 256 byte values (odd, so
/// salts 0..256 give distinct offsets).
const SALT_MULTIPLIER: usize = 37;

/// Fills `buf` like [`fill`], offset by `salt` (the collective benchmarks use the sending
/// rank, or sender and receiver, so every block of a gathered buffer differs).
pub fn fill_salted(buf: &mut [u8], salt: usize, iter: usize) {
    let size = buf.len().wrapping_add(salt.wrapping_mul(SALT_MULTIPLIER));
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(i, size, iter);
    }
}

/// Returns whether `buf` holds exactly what [`fill_salted`] wrote for `salt` and `iter`.
#[must_use]
pub fn check_salted(buf: &[u8], salt: usize, iter: usize) -> bool {
    let size = buf.len().wrapping_add(salt.wrapping_mul(SALT_MULTIPLIER));
    buf.iter()
        .enumerate()
        .all(|(i, &b)| b == pattern_byte(i, size, iter))
}

/// The `MPI_FLOAT` a rank contributes at element `index` in iteration `iter` of a reduction:
/// a small integer, so sums over any job size are exact in `f32`.
#[must_use]
pub fn reduction_value(rank: usize, index: usize, iter: usize) -> f32 {
    // Both terms stay below 2^16, so the conversions are exact.
    ((index.wrapping_add(iter) % 64) + rank % 1024) as f32
}

/// The sum over `ranks` ranks of [`reduction_value`] at `index` in iteration `iter`.
#[must_use]
pub fn reduction_sum(ranks: usize, index: usize, iter: usize) -> f32 {
    (0..ranks).map(|r| reduction_value(r, index, iter)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_then_check_passes_and_detects_corruption() {
        let mut buf = vec![0u8; 1000];
        fill(&mut buf, 3);
        assert!(check(&buf, 3));
        assert!(!check(&buf, 4), "another iteration has another pattern");
        buf[999] ^= 1;
        assert!(!check(&buf, 3));
    }

    #[test]
    fn pattern_matches_osu_formula() {
        // size 1, iteration 0: 7 * 1 + 1 + 0 = 8.
        assert_eq!(pattern_byte(0, 1, 0), 8);
        // wraps like a C char store: 7 * 40 + 1 + 0 = 281 -> 25.
        assert_eq!(pattern_byte(39, 1, 0), 25);
        assert!(check(&[], 0), "an empty message is trivially valid");
    }

    #[test]
    fn salted_patterns_differ_by_salt() {
        let mut buf = vec![0u8; 64];
        fill_salted(&mut buf, 3, 5);
        assert!(check_salted(&buf, 3, 5));
        assert!(!check_salted(&buf, 4, 5));
        assert!(!check_salted(&buf, 3, 6));
        assert_eq!(reduction_sum(3, 1, 2), 3.0 * 3.0 + 3.0);
    }
}
