//! Retry-safe pages: the `Feed-Cursor` token (SPEC "Feed versions",
//! retry-safe pages). A [`Cursor`] is a place in one user's feed of one
//! feed version; every `200` page carries the one after it, and
//! `?cursor=TOKEN` serves the page starting there again. This module is the
//! token's format only: the store decides what a cursor serves
//! (`feed.rs`), the wire carries it (`http/`).
//!
//! # Token
//!
//! 32 lowercase hex digits (upper case is accepted back), no spaces or
//! commas, so it needs no escaping in a URL or a header:
//!
//! ```text
//! VVVVVVVV PPPPPPPP OOOOOOOO CCCCCCCC
//! version  position pool     check
//! ```
//!
//! - `version`: a 32-bit tag of the store's feed version
//!   ([`version_tag`]). A token whose tag is not the serving version's is
//!   ignored (served as without a cursor): after a reload or a restart with
//!   another feed, old tokens simply stop steering. Two versions share a tag
//!   once in 2^32 reloads; such a token would then steer the new version.
//! - `position`: personalized items before this place.
//! - `pool`: where the fallback part of a page starting here starts in the
//!   fallback pool (taken modulo its size), so that a repeated page repeats
//!   its fallback items too, whatever the pool's rotation did meanwhile.
//! - `check`: 32 bits of a fixed hash of the three fields *and the user id*.
//!   A mistyped token, and a token of another user, fail it and are `422`
//!   ([`CursorProblem::Check`]): a client that mixes up its users' cursors
//!   hears about it instead of being served another position. The check is
//!   not a secret nor a signature: a client can make a token for any
//!   position of a user's feed, which it could read by paging anyway
//!   (with `--jwt-secret`, only of the user its token names).
//!
//! The format is opaque to clients (they pass it back unchanged) and may
//! change between releases; an old format's token then fails the check
//! like a typo.

use crate::hash::mix64;

/// Hex digits of a token.
pub const TOKEN_LEN: usize = 32;

/// Seeds of the tag and the check. Never change them: tokens outlive a
/// process in clients' hands (a restart over the same feed honours them).
const TAG_SEED: u64 = 0x3c6e_f372_fe94_f82b;
const CHECK_SEED: u64 = 0xa54f_f53a_5f1d_36f1;

/// A place in `user`'s feed of the feed version tagged `version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub user: u32,
    /// [`version_tag`] of the feed version.
    pub version: u32,
    /// Personalized items before this place.
    pub position: u32,
    /// Where a page starting here starts its fallback part in the pool.
    pub pool: u32,
}

/// Why a `cursor` parameter is not a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorProblem {
    /// Not 32 hex digits.
    Shape,
    /// The check does not match: mistyped, or another user's token.
    Check,
}

/// The 32-bit tag of a feed version, as tokens carry it.
#[inline]
pub fn version_tag(version: u64) -> u32 {
    (mix64(version ^ TAG_SEED) >> 32) as u32
}

impl Cursor {
    fn check(&self) -> u32 {
        let a = ((self.version as u64) << 32) | self.position as u64;
        let b = ((self.pool as u64) << 32) | self.user as u64;
        (mix64(mix64(a ^ CHECK_SEED) ^ b) >> 32) as u32
    }

    /// The token, as the `Feed-Cursor` header carries it. No allocation.
    #[inline]
    pub fn token(&self) -> [u8; TOKEN_LEN] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; TOKEN_LEN];
        let words = [self.version, self.position, self.pool, self.check()];
        for (w, word) in words.iter().enumerate() {
            for i in 0..8 {
                out[w * 8 + i] = HEX[(word >> (28 - 4 * i) & 0xf) as usize];
            }
        }
        out
    }

    /// Reads a token given for `user`'s feed.
    pub fn parse(token: &[u8], user: u32) -> Result<Cursor, CursorProblem> {
        if token.len() != TOKEN_LEN {
            return Err(CursorProblem::Shape);
        }
        let mut words = [0u32; 4];
        for (i, &b) in token.iter().enumerate() {
            let digit = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                b'A'..=b'F' => b - b'A' + 10,
                _ => return Err(CursorProblem::Shape),
            };
            words[i / 8] = words[i / 8] << 4 | digit as u32;
        }
        let cursor = Cursor {
            user,
            version: words[0],
            position: words[1],
            pool: words[2],
        };
        if cursor.check() != words[3] {
            return Err(CursorProblem::Check);
        }
        Ok(cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: Cursor = Cursor {
        user: 42,
        version: 0xdead_beef,
        position: 17,
        pool: 3,
    };

    #[test]
    fn a_token_reads_back_as_its_cursor() {
        for c in [
            C,
            Cursor {
                user: 0,
                version: 0,
                position: 0,
                pool: 0,
            },
            Cursor {
                user: u32::MAX,
                version: u32::MAX,
                position: u32::MAX,
                pool: u32::MAX,
            },
        ] {
            let token = c.token();
            assert!(token
                .iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b)));
            assert_eq!(Cursor::parse(&token, c.user), Ok(c));
            let upper = token.to_ascii_uppercase();
            assert_eq!(Cursor::parse(&upper, c.user), Ok(c), "hex in any case");
        }
        let token = C.token();
        assert_eq!(&token[..16], b"deadbeef00000011", "version and position");
    }

    #[test]
    fn malformed_tokens_are_told_apart_from_typos() {
        let token = C.token();
        assert_eq!(Cursor::parse(b"", 42), Err(CursorProblem::Shape));
        assert_eq!(Cursor::parse(&token[..31], 42), Err(CursorProblem::Shape));
        let mut long = token.to_vec();
        long.push(b'0');
        assert_eq!(Cursor::parse(&long, 42), Err(CursorProblem::Shape));
        for bad in [b'g', b' ', b',', b'%', b'-', 0xff] {
            let mut t = token;
            t[5] = bad;
            assert_eq!(Cursor::parse(&t, 42), Err(CursorProblem::Shape), "{bad}");
        }
        // Every single-digit typo anywhere fails the check.
        for i in 0..TOKEN_LEN {
            for d in b"0123456789abcdef" {
                let mut t = token;
                if t[i] == *d {
                    continue;
                }
                t[i] = *d;
                assert_eq!(Cursor::parse(&t, 42), Err(CursorProblem::Check), "{i}");
            }
        }
        // Another user's token is refused the same way.
        assert_eq!(Cursor::parse(&token, 43), Err(CursorProblem::Check));
    }

    #[test]
    fn version_tags_are_pinned_and_differ() {
        // Tokens outlive the process: the tag of a version never changes.
        assert_eq!(version_tag(0), version_tag(0));
        assert_ne!(version_tag(1), version_tag(2));
        assert_eq!(version_tag(0x0123_4567_89ab_cdef), PINNED_TAG);
        assert_eq!(&C.token()[24..], PINNED_CHECK);
    }

    const PINNED_TAG: u32 = 2_776_849_862;
    const PINNED_CHECK: &[u8] = b"5ebaed01";
}
