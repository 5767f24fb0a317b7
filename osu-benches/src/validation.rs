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
}
