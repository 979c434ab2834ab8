//! The one parser of unsigned decimal numbers, for every number that arrives
//! as text: user ids and sizes in request targets, `Content-Length`, and
//! the ids of feed and fallback files.

/// Why some text is not a number in range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecimalError {
    Empty,
    /// A byte that is not an ASCII digit (a sign, a space, a letter).
    NotDecimal,
    /// Digits only, but above the caller's maximum.
    TooLarge,
}

/// Parses `text` as digits only (no sign, no spaces, leading zeros allowed)
/// into a value `<= max`. Any non-digit anywhere is `NotDecimal`, even after
/// the value has already overflowed, so the error does not depend on where
/// the first bad byte stands.
#[inline]
pub fn parse(text: &[u8], max: u64) -> Result<u64, DecimalError> {
    if text.is_empty() {
        return Err(DecimalError::Empty);
    }
    let mut n: u64 = 0;
    let mut too_large = false;
    for &d in text {
        if !d.is_ascii_digit() {
            return Err(DecimalError::NotDecimal);
        }
        if !too_large {
            match n
                .checked_mul(10)
                .and_then(|n| n.checked_add((d - b'0') as u64))
            {
                Some(v) if v <= max => n = v,
                _ => too_large = true,
            }
        }
    }
    if too_large {
        Err(DecimalError::TooLarge)
    } else {
        Ok(n)
    }
}

/// [`parse`] into a `u32`.
#[inline]
pub fn parse_u32(text: &[u8]) -> Result<u32, DecimalError> {
    parse(text, u32::MAX as u64).map(|n| n as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_in_range_and_every_way_to_fail() {
        assert_eq!(parse(b"0", 10), Ok(0));
        assert_eq!(parse(b"007", 10), Ok(7));
        assert_eq!(parse(b"10", 10), Ok(10));
        assert_eq!(parse(b"11", 10), Err(DecimalError::TooLarge));
        assert_eq!(parse_u32(b"4294967295"), Ok(u32::MAX));
        assert_eq!(parse_u32(b"4294967296"), Err(DecimalError::TooLarge));
        assert_eq!(
            parse_u32(b"99999999999999999999999999"),
            Err(DecimalError::TooLarge)
        );
        assert_eq!(parse(b"18446744073709551615", u64::MAX), Ok(u64::MAX));
        assert_eq!(
            parse(b"18446744073709551616", u64::MAX),
            Err(DecimalError::TooLarge)
        );
        assert_eq!(parse(b"", 10), Err(DecimalError::Empty));
        for bad in [
            &b"-1"[..],
            b"+1",
            b" 1",
            b"1 ",
            b"1x",
            b"x",
            b"99999999999x",
            b"1,2",
        ] {
            assert_eq!(
                parse(bad, u64::MAX),
                Err(DecimalError::NotDecimal),
                "{bad:?}"
            );
        }
    }
}
