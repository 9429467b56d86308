//! A small GGUF header reader (versions 2 and 3): the metadata BZZZ needs
//! for placement and for Ollama's config blob, and the tensor table for
//! the weights' size. Every length is bounded before anything is
//! allocated, so a hostile file costs at most [`MAX_HEADER`] bytes of
//! reading and never panics (property-tested, and fuzzed through
//! [`parse`]).
//!
//! Layout: magic `GGUF`, version u32, tensor count u64, metadata count
//! u64, metadata (key string, value type u32, value), tensor infos (name,
//! dimension count u32, dimensions u64 each, ggml type u32, offset u64),
//! then padding to `general.alignment` (32) and the tensor data. All
//! little-endian; strings are a u64 length and UTF-8 bytes.

use std::collections::BTreeMap;
use std::io::Read;

use bzzz_proto::models::ModelFacts;

/// The most header bytes read (metadata with a large vocabulary is a few
/// MiB; 128 MiB leaves room and bounds a hostile file).
pub const MAX_HEADER: u64 = 128 * 1024 * 1024;
const MAX_STRING: u64 = 16 * 1024 * 1024;
const MAX_COUNT: u64 = 1 << 24;
const MAX_DIMS: u32 = 8;
/// Context Ollama runs a model with unless told otherwise.
pub const DEFAULT_CONTEXT: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("not a GGUF file (magic {0:02x?})")]
    Magic([u8; 4]),
    #[error("GGUF version {0} is not supported (2 and 3 are)")]
    Version(u32),
    #[error("GGUF header is damaged: {0}")]
    Damaged(String),
    #[error("reading the GGUF header: {0}")]
    Io(#[from] std::io::Error),
}

/// A metadata value this reader keeps (arrays are skipped: only their
/// length is kept).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i128),
    Float(f64),
    Bool(bool),
    Str(String),
    Array { len: u64 },
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Int(i) => u64::try_from(*i).ok(),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// One tensor's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    pub offset: u64,
}

/// The header.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<Tensor>,
    /// Where tensor data starts (after alignment).
    pub data_offset: u64,
}

struct R<T> {
    inner: T,
    read: u64,
}

impl<T: Read> R<T> {
    fn bytes(&mut self, n: u64) -> Result<Vec<u8>, GgufError> {
        if self.read + n > MAX_HEADER {
            return Err(GgufError::Damaged(format!(
                "header larger than {MAX_HEADER} bytes"
            )));
        }
        let mut v = Vec::new();
        (&mut self.inner).take(n).read_to_end(&mut v)?;
        if v.len() as u64 != n {
            return Err(GgufError::Damaged("truncated".into()));
        }
        self.read += n;
        Ok(v)
    }
    fn skip(&mut self, n: u64) -> Result<(), GgufError> {
        if self.read + n > MAX_HEADER {
            return Err(GgufError::Damaged(format!(
                "header larger than {MAX_HEADER} bytes"
            )));
        }
        let got = std::io::copy(&mut (&mut self.inner).take(n), &mut std::io::sink())?;
        if got != n {
            return Err(GgufError::Damaged("truncated".into()));
        }
        self.read += n;
        Ok(())
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let v = self.bytes(N as u64)?;
        let mut a = [0u8; N];
        a.copy_from_slice(&v);
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    fn count(&mut self, what: &str) -> Result<u64, GgufError> {
        let n = self.u64()?;
        if n > MAX_COUNT {
            return Err(GgufError::Damaged(format!("{what} count {n} is too large")));
        }
        Ok(n)
    }
    fn string(&mut self) -> Result<String, GgufError> {
        let n = self.u64()?;
        if n > MAX_STRING {
            return Err(GgufError::Damaged(format!("string of {n} bytes")));
        }
        String::from_utf8(self.bytes(n)?)
            .map_err(|_| GgufError::Damaged("a string is not UTF-8".into()))
    }
    fn scalar_size(t: u32) -> Option<u64> {
        Some(match t {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            _ => return None,
        })
    }
    fn value(&mut self, t: u32, depth: u8) -> Result<Value, GgufError> {
        Ok(match t {
            0 => Value::Int(self.arr::<1>()?[0].into()),
            1 => Value::Int((self.arr::<1>()?[0] as i8).into()),
            2 => Value::Int(u16::from_le_bytes(self.arr()?).into()),
            3 => Value::Int(i16::from_le_bytes(self.arr()?).into()),
            4 => Value::Int(self.u32()?.into()),
            5 => Value::Int(i32::from_le_bytes(self.arr()?).into()),
            6 => Value::Float(f32::from_le_bytes(self.arr()?).into()),
            7 => Value::Bool(self.arr::<1>()?[0] != 0),
            8 => Value::Str(self.string()?),
            9 => {
                if depth > 2 {
                    return Err(GgufError::Damaged("arrays nested too deep".into()));
                }
                let et = self.u32()?;
                let len = self.count("array")?;
                match Self::scalar_size(et) {
                    Some(sz) => self.skip(sz * len)?,
                    None => {
                        for _ in 0..len {
                            self.value(et, depth + 1)?;
                        }
                    }
                }
                Value::Array { len }
            }
            10 => Value::Int(self.u64()?.into()),
            11 => Value::Int(i64::from_le_bytes(self.arr()?).into()),
            12 => Value::Float(f64::from_le_bytes(self.arr()?)),
            t => return Err(GgufError::Damaged(format!("unknown value type {t}"))),
        })
    }
}

/// Reads the header from the start of a GGUF file.
pub fn parse(input: impl Read) -> Result<Header, GgufError> {
    let mut r = R {
        inner: input,
        read: 0,
    };
    let magic: [u8; 4] = r.arr()?;
    if &magic != b"GGUF" {
        return Err(GgufError::Magic(magic));
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::Version(version));
    }
    let n_tensors = r.count("tensor")?;
    let n_kv = r.count("metadata")?;
    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let key = r.string()?;
        let t = r.u32()?;
        let v = r.value(t, 0)?;
        metadata.insert(key, v);
    }
    let mut tensors = Vec::new();
    for _ in 0..n_tensors {
        let name = r.string()?;
        let nd = r.u32()?;
        if nd > MAX_DIMS {
            return Err(GgufError::Damaged(format!("tensor with {nd} dimensions")));
        }
        let dims = (0..nd).map(|_| r.u64()).collect::<Result<Vec<_>, _>>()?;
        let ggml_type = r.u32()?;
        let offset = r.u64()?;
        tensors.push(Tensor {
            name,
            dims,
            ggml_type,
            offset,
        });
    }
    let align = metadata
        .get("general.alignment")
        .and_then(Value::as_u64)
        .unwrap_or(32);
    if align == 0 || !align.is_power_of_two() || align > 1 << 20 {
        return Err(GgufError::Damaged(format!("alignment {align}")));
    }
    let data_offset = r.read.div_ceil(align) * align;
    Ok(Header {
        version,
        metadata,
        tensors,
        data_offset,
    })
}

/// Ollama's name for a `general.file_type` (llama.cpp's `llama_ftype`).
pub fn file_type_name(ft: u64) -> Option<&'static str> {
    Some(match ft {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        _ => return None,
    })
}

impl Header {
    fn arch_u64(&self, arch: &str, key: &str) -> Option<u64> {
        self.metadata
            .get(&format!("{arch}.{key}"))
            .and_then(Value::as_u64)
    }

    pub fn architecture(&self) -> Option<&str> {
        self.metadata
            .get("general.architecture")
            .and_then(Value::as_str)
    }

    /// The chat template (Jinja), when the file carries one.
    pub fn chat_template(&self) -> Option<&str> {
        self.metadata
            .get("tokenizer.chat_template")
            .and_then(Value::as_str)
    }

    /// Facts for placement: weights = the file's tensor data
    /// (`file_len - data_offset`), KV cache at [`DEFAULT_CONTEXT`] (or the
    /// model's trained context when smaller) in f16:
    /// `2 · blocks · ctx · kv_heads · head_dim · 2` bytes.
    pub fn facts(&self, file_len: u64) -> ModelFacts {
        let arch = self.architecture().map(str::to_owned);
        let a = arch.as_deref().unwrap_or("");
        let ctx_trained = self.arch_u64(a, "context_length");
        let blocks = self.arch_u64(a, "block_count").unwrap_or(0);
        let embd = self.arch_u64(a, "embedding_length").unwrap_or(0);
        let heads = self.arch_u64(a, "attention.head_count").unwrap_or(0);
        let kv_heads = self.arch_u64(a, "attention.head_count_kv").unwrap_or(heads);
        let head_dim = self
            .arch_u64(a, "attention.key_length")
            .or_else(|| embd.checked_div(heads))
            .unwrap_or(0);
        let ctx = ctx_trained.map_or(DEFAULT_CONTEXT, |c| c.min(DEFAULT_CONTEXT));
        let kv = 2u64
            .saturating_mul(blocks)
            .saturating_mul(ctx)
            .saturating_mul(kv_heads)
            .saturating_mul(head_dim)
            .saturating_mul(2);
        let parameters = self
            .tensors
            .iter()
            .map(|t| t.dims.iter().fold(1u64, |a, d| a.saturating_mul(*d)))
            .fold(0u64, u64::saturating_add);
        ModelFacts {
            architecture: arch,
            quantization: self
                .metadata
                .get("general.file_type")
                .and_then(Value::as_u64)
                .and_then(file_type_name)
                .map(str::to_owned),
            parameters: (parameters > 0).then_some(parameters),
            context_length: ctx_trained,
            weights_bytes: file_len.saturating_sub(self.data_offset),
            kv_cache_bytes: kv,
        }
    }
}

/// Memory to run a model: weights + KV cache + compute buffers (5 % of
/// the weights, at least 64 MiB). A planning estimate, not a promise.
pub fn vram_estimate(f: &ModelFacts) -> u64 {
    let compute = (f.weights_bytes / 20).max(64 << 20);
    f.weights_bytes
        .saturating_add(f.kv_cache_bytes)
        .saturating_add(compute)
}

/// Writes a minimal GGUF header (tests and benchmarks build synthetic
/// models with it): the given metadata (u32, u64 or string values) and
/// one tensor per `(name, dims)`.
pub fn synthetic_header(meta: &[(&str, Value)], tensors: &[(&str, Vec<u64>)]) -> Vec<u8> {
    fn s(out: &mut Vec<u8>, v: &str) {
        out.extend((v.len() as u64).to_le_bytes());
        out.extend(v.as_bytes());
    }
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((meta.len() as u64).to_le_bytes());
    for (k, v) in meta {
        s(&mut out, k);
        match v {
            Value::Str(x) => {
                out.extend(8u32.to_le_bytes());
                s(&mut out, x);
            }
            Value::Int(i) => {
                out.extend(10u32.to_le_bytes());
                out.extend((*i as u64).to_le_bytes());
            }
            Value::Bool(b) => {
                out.extend(7u32.to_le_bytes());
                out.push(u8::from(*b));
            }
            Value::Float(f) => {
                out.extend(12u32.to_le_bytes());
                out.extend(f.to_le_bytes());
            }
            Value::Array { .. } => {
                out.extend(9u32.to_le_bytes());
                out.extend(4u32.to_le_bytes());
                out.extend(0u64.to_le_bytes());
            }
        }
    }
    let mut off = 0u64;
    for (name, dims) in tensors {
        s(&mut out, name);
        out.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            out.extend(d.to_le_bytes());
        }
        out.extend(0u32.to_le_bytes());
        out.extend(off.to_le_bytes());
        off += dims.iter().product::<u64>() * 4;
    }
    while !out.len().is_multiple_of(32) {
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        synthetic_header(
            &[
                ("general.architecture", Value::Str("llama".into())),
                ("general.file_type", Value::Int(3)),
                ("llama.block_count", Value::Int(30)),
                ("llama.context_length", Value::Int(8192)),
                ("llama.embedding_length", Value::Int(576)),
                ("llama.attention.head_count", Value::Int(9)),
                ("llama.attention.head_count_kv", Value::Int(3)),
                ("tokenizer.ggml.tokens", Value::Array { len: 0 }),
            ],
            &[("token_embd.weight", vec![576, 49152]), ("x", vec![10])],
        )
    }

    #[test]
    fn reads_facts() {
        let bytes = sample();
        let h = parse(&bytes[..]).unwrap();
        assert_eq!(h.version, 3);
        assert_eq!(h.tensors.len(), 2);
        assert_eq!(h.data_offset, bytes.len() as u64);
        let f = h.facts(bytes.len() as u64 + 1000);
        assert_eq!(f.architecture.as_deref(), Some("llama"));
        assert_eq!(f.quantization.as_deref(), Some("Q4_1"));
        assert_eq!(f.parameters, Some(576 * 49152 + 10));
        assert_eq!(f.weights_bytes, 1000);
        // 2 (K,V) · 30 blocks · 4096 ctx · 3 kv heads · 64 dims · 2 bytes
        assert_eq!(f.kv_cache_bytes, 2 * 30 * 4096 * 3 * 64 * 2);
        assert!(vram_estimate(&f) > f.kv_cache_bytes);
    }

    #[test]
    fn refuses_garbage() {
        assert!(matches!(parse(&b"GGML...."[..]), Err(GgufError::Magic(_))));
        let mut v = sample();
        v[4] = 9;
        assert!(matches!(parse(&v[..]), Err(GgufError::Version(9))));
        let v = sample();
        assert!(parse(&v[..40]).is_err());
        // A huge declared string is refused before any allocation.
        let mut v = b"GGUF".to_vec();
        v.extend(3u32.to_le_bytes());
        v.extend(0u64.to_le_bytes());
        v.extend(1u64.to_le_bytes());
        v.extend(u64::MAX.to_le_bytes());
        assert!(matches!(parse(&v[..]), Err(GgufError::Damaged(_))));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = parse(&bytes[..]);
        }

        #[test]
        fn never_panics_on_mutations(i in 0usize..400, b in proptest::prelude::any::<u8>()) {
            let mut v = sample();
            let n = v.len();
            v[i % n] = b;
            let _ = parse(&v[..]).map(|h| h.facts(1 << 30));
        }
    }
}
