//! Byte buffers that travel as one block, and views of them mapped from the store.

use super::core::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::ops::{Deref, DerefMut};

/// Bytes that serialise as one block: their length, then the bytes. (A `Vec<u8>` serialises
/// byte by byte, which costs about a nanosecond a byte each way.) The type for large buffers: a
/// task may take or return one, [`Keel::put_bytes`](super::Keel::put_bytes) stores a slice as
/// one without copying it first, and [`Keel::get_bytes`](super::Keel::get_bytes) reads one back
/// as a [`BlobView`] mapped from the store, copying nothing.
#[derive(Clone, Default, PartialEq, Eq, Hash, Debug)]
pub struct Blob(pub Vec<u8>);

impl Deref for Blob {
    type Target = Vec<u8>;

    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl DerefMut for Blob {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl From<Vec<u8>> for Blob {
    fn from(bytes: Vec<u8>) -> Blob {
        Blob(bytes)
    }
}

impl From<Blob> for Vec<u8> {
    fn from(blob: Blob) -> Vec<u8> {
        blob.0
    }
}

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Blob, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Blob;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }

            fn visit_bytes<E>(self, v: &[u8]) -> Result<Blob, E> {
                Ok(Blob(v.to_vec()))
            }

            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Blob, E> {
                Ok(Blob(v))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Blob, A::Error> {
                let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = seq.next_element()? {
                    bytes.push(b);
                }
                Ok(Blob(bytes))
            }
        }
        deserializer.deserialize_byte_buf(Visit)
    }
}

/// A slice that serialises exactly as a [`Blob`] holding it would.
pub(crate) struct BlobSlice<'a>(pub &'a [u8]);

impl Serialize for BlobSlice<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

/// A [`Blob`]'s bytes where they lie: mapped from the store of a node on this machine (nothing
/// copied; the mapping outlives the object's deletion), or owned when they came inline or over
/// the network.
pub struct BlobView {
    bytes: Bytes,
    start: usize,
}

impl BlobView {
    /// Reads the encoded blob in `bytes` (its length, then the bytes) without copying.
    pub(crate) fn new(bytes: Bytes) -> Result<BlobView, String> {
        let mut len: u64 = 0;
        let mut start = None;
        for (i, b) in bytes.iter().take(10).enumerate() {
            len |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                start = Some(i + 1);
                break;
            }
        }
        let start = start.ok_or("the value does not start with a byte length")?;
        let body = (bytes.len() - start) as u64;
        if len != body {
            return Err(format!("the value says it holds {len} bytes but {body} follow its length: not a Blob"));
        }
        Ok(BlobView { bytes, start })
    }

    /// Whether the bytes are mapped from a store (not copied).
    pub fn is_mapped(&self) -> bool {
        matches!(self.bytes, Bytes::Mapped(_))
    }

    /// A copy, as an owned [`Blob`].
    pub fn to_blob(&self) -> Blob {
        Blob(self.to_vec())
    }
}

impl Deref for BlobView {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes[self.start..]
    }
}

impl std::fmt::Debug for BlobView {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.debug_struct("BlobView").field("len", &self.len()).field("mapped", &self.is_mapped()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_and_a_blob_slice_encode_alike_and_a_view_finds_the_bytes() {
        for len in [0usize, 1, 127, 128, 300, 70_000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let owned = postcard::to_allocvec(&Blob(data.clone())).unwrap();
            assert_eq!(owned, postcard::to_allocvec(&BlobSlice(&data)).unwrap(), "len {len}");
            // The same bytes as a Vec<u8>'s: the two types read each other's values.
            assert_eq!(owned, postcard::to_allocvec(&data).unwrap(), "len {len}");
            assert_eq!(postcard::from_bytes::<Vec<u8>>(&owned).unwrap(), data);
            assert_eq!(postcard::from_bytes::<Blob>(&owned).unwrap().0, data);
            let view = BlobView::new(Bytes::Owned(owned)).unwrap();
            assert_eq!(&*view, &data[..], "len {len}");
            assert!(!view.is_mapped());
        }
    }

    #[test]
    fn a_view_of_something_else_is_refused_with_the_sizes() {
        let words = postcard::to_allocvec(&vec![1000u32, 2000, 3000]).unwrap();
        let e = BlobView::new(Bytes::Owned(words)).unwrap_err();
        assert!(e.contains("not a Blob"), "{e}");
        let e = BlobView::new(Bytes::Owned(vec![0x80; 12])).unwrap_err();
        assert!(e.contains("byte length"), "{e}");
    }
}
