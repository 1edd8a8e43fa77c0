//! Values that cross MPI: each type says how it becomes bytes and back, so the run's gathers and
//! broadcasts are typed (`World::gather`, `all_gather`, `broadcast`) and no phase hand-packs bytes.
//! Fixed-size numbers are little-endian; lists carry their length; anything serde can write goes as
//! JSON through [`Json`].

/// Why bytes from another rank could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("{got} bytes where {what} needs {need}")]
    Short { what: &'static str, got: usize, need: usize },
    #[error("{0}: trailing bytes")]
    Trailing(&'static str),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// A value another rank can send.
pub trait Wire: Sized {
    fn to_wire(&self) -> Vec<u8>;
    fn from_wire(bytes: &[u8]) -> Result<Self, WireError>;
}

/// A reader over received bytes.
struct Reader<'a> {
    what: &'static str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(what: &'static str, bytes: &'a [u8]) -> Self {
        Reader { what, bytes, at: 0 }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end =
            end.ok_or(WireError::Short { what: self.what, got: self.bytes.len(), need: self.at.saturating_add(n) })?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn len(&mut self) -> Result<usize, WireError> {
        let n = self.u64()?;
        usize::try_from(n).map_err(|_| WireError::Short { what: self.what, got: self.bytes.len(), need: usize::MAX })
    }
    fn end(self) -> Result<(), WireError> {
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            Err(WireError::Trailing(self.what))
        }
    }
}

impl Wire for bool {
    fn to_wire(&self) -> Vec<u8> {
        vec![*self as u8]
    }
    fn from_wire(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new("a flag", bytes);
        let b = r.take(1)?[0] != 0;
        r.end()?;
        Ok(b)
    }
}

/// UTF-8 text (invalid sequences read back as U+FFFD).
impl Wire for String {
    fn to_wire(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
    fn from_wire(bytes: &[u8]) -> Result<Self, WireError> {
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }
}

/// (start, end) pairs: device step times.
impl Wire for Vec<(u64, u64)> {
    fn to_wire(&self) -> Vec<u8> {
        self.iter().flat_map(|&(a, b)| [a.to_le_bytes(), b.to_le_bytes()].concat()).collect()
    }
    fn from_wire(bytes: &[u8]) -> Result<Self, WireError> {
        if bytes.len() % 16 != 0 {
            return Err(WireError::Trailing("(u64, u64) pairs"));
        }
        let mut r = Reader::new("(u64, u64) pairs", bytes);
        (0..bytes.len() / 16).map(|_| Ok((r.u64()?, r.u64()?))).collect()
    }
}

/// Token id lists: prompts.
impl Wire for Vec<Vec<i32>> {
    fn to_wire(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(8 + self.iter().map(|p| 8 + 4 * p.len()).sum::<usize>());
        b.extend_from_slice(&(self.len() as u64).to_le_bytes());
        for p in self {
            b.extend_from_slice(&(p.len() as u64).to_le_bytes());
            p.iter().for_each(|t| b.extend_from_slice(&t.to_le_bytes()));
        }
        b
    }
    fn from_wire(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new("token lists", bytes);
        let n = r.len()?;
        let mut out = Vec::with_capacity(n.min(bytes.len() / 8));
        for _ in 0..n {
            let len = r.len()?;
            let raw = r.take(len.checked_mul(4).ok_or(WireError::Short {
                what: "token lists",
                got: bytes.len(),
                need: usize::MAX,
            })?)?;
            out.push(raw.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes"))).collect());
        }
        r.end()?;
        Ok(out)
    }
}

/// Any serde value, as JSON (the ranks' reports, CUPTI activity, trace parts).
#[derive(Debug, Clone, PartialEq)]
pub struct Json<T>(pub T);

impl<T: serde::Serialize + serde::de::DeserializeOwned> Wire for Json<T> {
    fn to_wire(&self) -> Vec<u8> {
        serde_json::to_vec(&self.0).expect("plain data serializes to JSON")
    }
    fn from_wire(bytes: &[u8]) -> Result<Self, WireError> {
        Ok(Json(serde_json::from_slice(bytes)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Wire + PartialEq + std::fmt::Debug>(v: T) {
        assert_eq!(T::from_wire(&v.to_wire()).unwrap(), v);
    }

    #[test]
    fn values_come_back_as_they_went() {
        round_trip(true);
        round_trip(false);
        round_trip("GPU-ab12|0".to_string());
        round_trip(vec![(1u64, 2u64), (u64::MAX, 0)]);
        round_trip(Vec::<(u64, u64)>::new());
        round_trip(vec![vec![1i32, -2, 3], vec![], vec![i32::MAX]]);
        round_trip(Json(vec![Some(1u32), None]));
        round_trip(Json(("node-1".to_string(), 4242u32)));
    }

    #[test]
    fn bad_bytes_are_errors_not_panics() {
        let p = vec![vec![1i32, 2, 3]].to_wire();
        assert!(matches!(Vec::<Vec<i32>>::from_wire(&p[..p.len() - 1]), Err(WireError::Short { .. })));
        let mut long = p.clone();
        long.push(0);
        assert!(matches!(Vec::<Vec<i32>>::from_wire(&long), Err(WireError::Trailing(_))));
        // A length far beyond the bytes: no huge allocation, an error.
        let huge = [u64::MAX.to_le_bytes(), 0u64.to_le_bytes()].concat();
        assert!(Vec::<Vec<i32>>::from_wire(&huge).is_err());
        assert!(Vec::<(u64, u64)>::from_wire(&[0u8; 17]).is_err());
        assert!(bool::from_wire(&[]).is_err());
        assert!(Json::<u32>::from_wire(b"x").is_err());
    }
}
