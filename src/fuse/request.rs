//! Decoding a request body: a cursor over the bytes after the in-header, with every length
//! checked. Nothing here trusts the guest.

use std::ffi::CStr;

use zerocopy::{FromBytes, Immutable, KnownLayout};

use super::abi::{ExtHeader, FUSE_EXT_GROUPS, SuppGroups};

/// A request the guest sent that we cannot decode. Each answers EINVAL.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The guest sent fewer bytes than the in-header needs.
    #[error("request shorter than its header")]
    HeaderTooShort,
    /// The guest's in-header length disagrees with the chain.
    #[error("header says {len} bytes, chain has {available}")]
    LengthMismatch { len: u32, available: usize },
    /// The guest's body is shorter than the operation's struct.
    #[error("body too short: need {needed}, have {have}")]
    BodyTooShort { needed: usize, have: usize },
    /// The guest sent a name without its terminating NUL.
    #[error("name without NUL terminator")]
    MissingNul,
    /// The guest sent a malformed request extension.
    #[error("malformed request extension")]
    BadExtension,
    /// The guest sent a count that does not match the message length.
    #[error("count {count} does not match the message length")]
    CountExceedsLen { count: u32 },
    /// The guest sent a request larger than we accept.
    #[error("request of {len} bytes exceeds the limit")]
    TooLarge { len: u32 },
}

/// A cursor over a request body.
pub struct Body<'b> {
    bytes: &'b [u8],
}

impl<'b> Body<'b> {
    /// A cursor over `bytes`.
    pub fn new(bytes: &'b [u8]) -> Body<'b> {
        Body { bytes }
    }

    /// Takes one wire struct (unaligned is fine).
    pub fn obj<T: FromBytes + KnownLayout + Immutable>(&mut self) -> Result<T, DecodeError> {
        let have = self.bytes.len();
        let (v, rest) =
            T::read_from_prefix(self.bytes).map_err(|_| DecodeError::BodyTooShort { needed: size_of::<T>(), have })?;
        self.bytes = rest;
        Ok(v)
    }

    /// Takes a NUL-terminated name.
    pub fn cstr(&mut self) -> Result<&'b CStr, DecodeError> {
        let s = CStr::from_bytes_until_nul(self.bytes).map_err(|_| DecodeError::MissingNul)?;
        self.bytes = self.bytes.get(s.to_bytes_with_nul().len()..).unwrap_or_default();
        Ok(s)
    }

    /// Takes exactly `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'b [u8], DecodeError> {
        let have = self.bytes.len();
        if n > have {
            return Err(DecodeError::BodyTooShort { needed: n, have });
        }
        let (a, b) = self.bytes.split_at(n);
        self.bytes = b;
        Ok(a)
    }

    /// Everything left.
    pub fn rest(&self) -> &'b [u8] {
        self.bytes
    }
}

/// Splits `extlen` bytes of request extensions off the end of `body`; returns (body, groups).
pub fn split_extensions(body: &[u8], extlen: usize) -> Result<(&[u8], Vec<u32>), DecodeError> {
    let at = body.len().checked_sub(extlen).ok_or(DecodeError::BadExtension)?;
    let (body, mut ext) = body.split_at(at);
    let mut groups = Vec::new();
    while !ext.is_empty() {
        let (h, _) = ExtHeader::read_from_prefix(ext).map_err(|_| DecodeError::BadExtension)?;
        let size = usize::try_from(h.size).map_err(|_| DecodeError::BadExtension)?;
        if size < size_of::<ExtHeader>() || size % 8 != 0 || size > ext.len() {
            return Err(DecodeError::BadExtension);
        }
        let payload = ext.get(size_of::<ExtHeader>()..size).ok_or(DecodeError::BadExtension)?;
        if h.typ == FUSE_EXT_GROUPS {
            groups = parse_groups(payload)?;
        }
        ext = ext.get(size..).unwrap_or_default();
    }
    Ok((body, groups))
}

fn parse_groups(p: &[u8]) -> Result<Vec<u32>, DecodeError> {
    let (g, rest) = SuppGroups::read_from_prefix(p).map_err(|_| DecodeError::BadExtension)?;
    let n = usize::try_from(g.nr_groups).map_err(|_| DecodeError::BadExtension)?;
    let need = n.checked_mul(4).ok_or(DecodeError::BadExtension)?;
    let ids = rest.get(..need).ok_or(DecodeError::BadExtension)?;
    Ok(ids.chunks_exact(4).filter_map(|c| c.try_into().ok()).map(u32::from_le_bytes).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuse::abi::{GetattrIn, RemovemappingOne};
    use zerocopy::IntoBytes;

    #[test]
    fn obj_on_short_body_is_body_too_short() {
        let mut b = Body::new(&[0u8; 10]);
        assert_eq!(b.obj::<GetattrIn>().unwrap_err(), DecodeError::BodyTooShort { needed: 16, have: 10 });
    }

    #[test]
    fn cstr_without_nul_is_missing_nul_and_two_names_decode() {
        assert_eq!(Body::new(b"abc").cstr().unwrap_err(), DecodeError::MissingNul);
        let mut b = Body::new(b"old\0new\0tail");
        assert_eq!(b.cstr().unwrap().to_bytes(), b"old");
        assert_eq!(b.cstr().unwrap().to_bytes(), b"new");
        assert_eq!(b.rest(), b"tail");
    }

    #[test]
    fn unaligned_struct_reads_at_odd_offsets() {
        // REMOVEMAPPING's array starts at byte 44: unaligned reads must work.
        let one = RemovemappingOne { moffset: 0x20_0000, len: 0x20_0000 };
        let mut bytes = vec![7u8; 4];
        bytes.extend_from_slice(one.as_bytes());
        let mut b = Body::new(&bytes);
        b.bytes(4).unwrap();
        let got: RemovemappingOne = b.obj().unwrap();
        assert_eq!((got.moffset, got.len), (0x20_0000, 0x20_0000));
    }

    fn ext(size: u32, typ: u32, payload: &[u8]) -> Vec<u8> {
        [ExtHeader { size, typ }.as_bytes(), payload].concat()
    }

    #[test]
    fn split_extensions_reads_supplementary_groups() {
        let groups = [SuppGroups { nr_groups: 1 }.as_bytes(), &77u32.to_le_bytes()].concat();
        let body = [b"name\0".as_slice(), &[0; 3], &ext(16, FUSE_EXT_GROUPS, &groups)].concat();
        let (rest, g) = split_extensions(&body, 16).unwrap();
        assert_eq!(rest, b"name\0\0\0\0");
        assert_eq!(g, vec![77]);
    }

    #[test]
    fn split_extensions_rejects_bad_lengths() {
        assert_eq!(split_extensions(b"short", 8).unwrap_err(), DecodeError::BadExtension);
        let body = ext(4, FUSE_EXT_GROUPS, &[0; 4]);
        assert_eq!(split_extensions(&body, 8).unwrap_err(), DecodeError::BadExtension);
        let body = ext(64, FUSE_EXT_GROUPS, &[0; 8]);
        assert_eq!(split_extensions(&body, 16).unwrap_err(), DecodeError::BadExtension);
        let lying = [SuppGroups { nr_groups: 1000 }.as_bytes(), &[0u8; 4]].concat();
        let body = ext(16, FUSE_EXT_GROUPS, &lying);
        assert_eq!(split_extensions(&body, 16).unwrap_err(), DecodeError::BadExtension);
    }

    #[test]
    fn unknown_extensions_are_skipped() {
        let body = ext(16, 31, &[1; 8]);
        let (rest, g) = split_extensions(&body, 16).unwrap();
        assert!(rest.is_empty() && g.is_empty());
    }
}
