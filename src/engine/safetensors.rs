//! Hugging Face checkpoints in the safetensors format, read shard by shard.
//!
//! A model directory holds `config.json` and either `model.safetensors` or
//! `model.safetensors.index.json` plus the files its `weight_map` names (as `save_pretrained`
//! writes them). [`SafetensorsDir::open`] reads the config and every file's header, and maps
//! each file into memory. Nothing else is read until a tensor is asked for.
//!
//! [`SafetensorsDir::read`] then copies out only the bytes of one rank's piece of a tensor
//! ([`Sharding`]): a contiguous row range is one contiguous byte range of the file. A column range
//! is one short piece per row. Pages the rank never touches are never read from disk. The result is
//! a [`HostTensor`] in the file's dtype. `read_f32`, `read_f16_bits` and `read_bf16_bits` convert
//! it on the way (a CPU engine computes in f32, a GPU engine uploads f16/bf16 bits directly).
//!
//! Every tensor is checked against the shape the caller derives from the config (Hugging Face
//! layout: a linear weight is `(out_features, in_features)`), and its dtype must be F32, F16 or
//! BF16. Every error is one line that names the file, the tensor and what was expected.
//!
//! Headers are parsed by the `safetensors` crate (`SafeTensors::read_metadata`). It also checks
//! that the tensors' byte ranges tile the data section exactly, so a truncated or corrupt file
//! fails at open, not at the first out-of-range read. The data is read through `memmap2`.
//! [`write_safetensors`] writes the same format from tensors in memory (tests use it to build small
//! checkpoints); [`write_safetensors_streamed`] writes it tensor by tensor, for checkpoints larger
//! than memory.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::SafeTensors;

use crate::engine::config::{Config, ConfigError};

/// The single-file checkpoint name.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The index of a checkpoint split over several files.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Errors from opening, reading or writing a checkpoint. Each one names the file and, where
/// there is one, the tensor.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// `config.json` is missing or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The directory has neither weight file.
    #[error(
        "no weights in {}: expected {SINGLE_FILE} or {INDEX_FILE} (Hugging Face safetensors)",
        dir.display()
    )]
    NoWeights { dir: PathBuf },
    /// A file cannot be opened or mapped.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file is not a valid safetensors file (bad header, truncated data, ...).
    #[error("invalid safetensors file {}: {reason}", path.display())]
    Header { path: PathBuf, reason: String },
    /// The index file is not valid JSON, lacks `weight_map`, names a file outside the directory,
    /// or maps a tensor to a file whose header lacks it.
    #[error("invalid checkpoint index {}: {reason}", path.display())]
    Index { path: PathBuf, reason: String },
    /// The model needs a tensor that the checkpoint does not have.
    #[error("tensor {tensor} not found in {}", place.display())]
    MissingTensor { tensor: String, place: PathBuf },
    /// A tensor's shape differs from the one the config implies.
    #[error(
        "tensor {tensor} in {} has shape {found:?}, expected {expected:?} (from config.json)",
        path.display()
    )]
    Shape { tensor: String, path: PathBuf, found: Vec<usize>, expected: Vec<usize> },
    /// A tensor's dtype is not one of F32, F16, BF16.
    #[error("tensor {tensor} in {} has dtype {dtype}, expected F32, F16 or BF16", path.display())]
    Dtype { tensor: String, path: PathBuf, dtype: String },
    /// The requested shard does not fit the tensor (a caller bug, not bad input).
    #[error("tensor {tensor} in {} of shape {shape:?}: cannot take shard {shard}", path.display())]
    Shard { tensor: String, path: PathBuf, shape: Vec<usize>, shard: Sharding },
    /// Writing a checkpoint failed.
    #[error("cannot write {}: {reason}", path.display())]
    Write { path: PathBuf, reason: String },
}

/// Element types the engines accept (the floating-point types checkpoints are published in).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    F32,
    F16,
    BF16,
}

impl Dtype {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
        }
    }

    /// The name safetensors headers use ("F32", "F16", "BF16").
    pub const fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
        }
    }

    /// The name PyTorch and a Hugging Face `config.json` use ("float32", "float16", "bfloat16").
    pub const fn torch_name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::F16 => "float16",
            Dtype::BF16 => "bfloat16",
        }
    }

    fn from_header(d: safetensors::Dtype) -> Option<Dtype> {
        match d {
            safetensors::Dtype::F32 => Some(Dtype::F32),
            safetensors::Dtype::F16 => Some(Dtype::F16),
            safetensors::Dtype::BF16 => Some(Dtype::BF16),
            _ => None,
        }
    }

    fn to_header(self) -> safetensors::Dtype {
        match self {
            Dtype::F32 => safetensors::Dtype::F32,
            Dtype::F16 => safetensors::Dtype::F16,
            Dtype::BF16 => safetensors::Dtype::BF16,
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which part of a tensor a rank reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sharding {
    /// The whole tensor (replicated weights: norms, the embedding).
    Full,
    /// Rows `range` of a 2-D `(rows, cols)` tensor, or elements `range` of a 1-D one. In the
    /// `(out, in)` layout this is a slice of the outputs: column-parallel q/k/v/gate/up weights
    /// and biases, and the vocabulary-parallel LM head.
    Rows(Range<usize>),
    /// Columns `range` of every row of a 2-D tensor. In the `(out, in)` layout this is a slice
    /// of the inputs: the row-parallel o_proj/down_proj.
    Cols(Range<usize>),
}

impl fmt::Display for Sharding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sharding::Full => f.write_str("full"),
            Sharding::Rows(r) => write!(f, "rows {}..{}", r.start, r.end),
            Sharding::Cols(c) => write!(f, "columns {}..{}", c.start, c.end),
        }
    }
}

/// A tensor (or a shard of one) in host memory: little-endian elements of `dtype`, row-major,
/// `shape` being the shape of this piece (e.g. `(rows.len(), cols)` for [`Sharding::Rows`]).
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl HostTensor {
    /// An F32 tensor from values (row-major); panics if `values` does not fill `shape`.
    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> HostTensor {
        assert_eq!(shape.iter().product::<usize>(), values.len(), "shape {shape:?}");
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        HostTensor { dtype: Dtype::F32, shape, bytes }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.bytes.len() / self.dtype.size()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The values as f32 (exact from F16 and BF16).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.len());
        decode_f32(self.dtype, &self.bytes, &mut out);
        out
    }

    /// The values as IEEE half bits (f32 rounds to nearest even; BF16 goes through f32).
    pub fn to_f16_bits(&self) -> Vec<u16> {
        let mut out = Vec::with_capacity(self.len());
        encode_16(self.dtype, Dtype::F16, &self.bytes, &mut out);
        out
    }

    /// The values as bfloat16 bits (f32 rounds to nearest even; F16 goes through f32).
    pub fn to_bf16_bits(&self) -> Vec<u16> {
        let mut out = Vec::with_capacity(self.len());
        encode_16(self.dtype, Dtype::BF16, &self.bytes, &mut out);
        out
    }

    /// The same values in `dtype` (a copy when the dtype already matches).
    pub fn convert(&self, dtype: Dtype) -> HostTensor {
        let bytes = match (self.dtype, dtype) {
            (a, b) if a == b => self.bytes.clone(),
            (_, Dtype::F32) => self.to_f32().iter().flat_map(|v| v.to_le_bytes()).collect(),
            (_, Dtype::F16) => self.to_f16_bits().iter().flat_map(|v| v.to_le_bytes()).collect(),
            (_, Dtype::BF16) => self.to_bf16_bits().iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        HostTensor { dtype, shape: self.shape.clone(), bytes }
    }
}

fn le_u16(c: &[u8]) -> u16 {
    u16::from_le_bytes([c[0], c[1]])
}

/// Appends the f32 values of little-endian `bytes` of `dtype` to `out`.
fn decode_f32(dtype: Dtype, bytes: &[u8], out: &mut Vec<f32>) {
    match dtype {
        Dtype::F32 => out.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        Dtype::F16 => out.extend(bytes.chunks_exact(2).map(|c| f16::from_bits(le_u16(c)).to_f32())),
        Dtype::BF16 => out.extend(bytes.chunks_exact(2).map(|c| bf16::from_bits(le_u16(c)).to_f32())),
    }
}

/// Appends the 16-bit encodings (`to`: F16 or BF16) of little-endian `bytes` of `from` to `out`.
fn encode_16(from: Dtype, to: Dtype, bytes: &[u8], out: &mut Vec<u16>) {
    let from_f32 = |v: f32| match to {
        Dtype::BF16 => bf16::from_f32(v).to_bits(),
        _ => f16::from_f32(v).to_bits(),
    };
    if from == to {
        out.extend(bytes.chunks_exact(2).map(le_u16));
    } else {
        let mut values = Vec::with_capacity(bytes.len() / from.size());
        decode_f32(from, bytes, &mut values);
        out.extend(values.into_iter().map(from_f32));
    }
}

/// What the header says about one tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorMeta {
    /// The header's dtype name, e.g. "BF16" (also for dtypes the engines cannot use).
    pub dtype: String,
    pub shape: Vec<usize>,
    /// The file holding it.
    pub file: PathBuf,
}

/// One mapped file: its data section starts at `data_start`.
struct MappedFile {
    path: PathBuf,
    map: Mmap,
    data_start: usize,
}

/// A checked shard of one tensor: its dtype, its shape, and its bytes as slices of the mapping
/// (one slice, or one per row for a column shard).
struct Pieces<'a> {
    dtype: Dtype,
    shape: Vec<usize>,
    slices: Vec<&'a [u8]>,
}

/// Where one tensor lives: file index, header dtype, shape, byte range within the data section.
struct Entry {
    file: usize,
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    bytes: Range<usize>,
}

/// A Hugging Face model directory: its config and its memory-mapped safetensors files.
///
/// The mappings are shared, read-only and private to this process. Safety relies on nobody
/// truncating or rewriting the checkpoint files while they are open, as for every
/// mmap-based loader.
pub struct SafetensorsDir {
    dir: PathBuf,
    config: Config,
    files: Vec<MappedFile>,
    tensors: HashMap<String, Entry>,
    /// What a missing tensor is reported against: the single file or the index.
    listing: PathBuf,
}

#[derive(serde::Deserialize)]
struct IndexJson {
    weight_map: BTreeMap<String, String>,
}

impl SafetensorsDir {
    /// Opens `dir`: reads `config.json`, then `model.safetensors` if present, else
    /// `model.safetensors.index.json` and the files it names (the order `transformers` uses).
    /// Reads and checks every header; no tensor data is read.
    pub fn open(dir: impl AsRef<Path>) -> Result<SafetensorsDir, WeightsError> {
        let dir = dir.as_ref().to_path_buf();
        let config = Config::from_json_file(dir.join("config.json"))?;
        let single = dir.join(SINGLE_FILE);
        let index = dir.join(INDEX_FILE);
        let mut files = Vec::new();
        let mut tensors = HashMap::new();
        let listing;
        if single.is_file() {
            let mut file = map_file(&single)?;
            let meta = header(&mut file)?;
            for (name, info) in meta.tensors() {
                tensors.insert(name, entry(0, info));
            }
            files.push(file);
            listing = single;
        } else if index.is_file() {
            let text =
                std::fs::read_to_string(&index).map_err(|source| WeightsError::Io { path: index.clone(), source })?;
            let parsed: IndexJson = serde_json::from_str(&text).map_err(|e| WeightsError::Index {
                path: index.clone(),
                reason: crate::engine::one_line(&e.to_string()),
            })?;
            // Each distinct file once, in name order.
            let mut by_file: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for (tensor, file) in &parsed.weight_map {
                by_file.entry(file).or_default().push(tensor);
            }
            for (file_name, names) in by_file {
                let plain = Path::new(file_name).components().all(|c| matches!(c, Component::Normal(_)));
                if !plain {
                    return Err(WeightsError::Index {
                        path: index.clone(),
                        reason: format!("file name {file_name:?} is not inside the directory"),
                    });
                }
                let mut file = map_file(&dir.join(file_name))?;
                let meta = header(&mut file)?;
                for name in names {
                    let info = meta.info(name).ok_or_else(|| WeightsError::Index {
                        path: index.clone(),
                        reason: format!("weight_map puts tensor {name} in {file_name}, whose header lacks it"),
                    })?;
                    tensors.insert(name.to_string(), entry(files.len(), info));
                }
                files.push(file);
            }
            listing = index;
        } else {
            return Err(WeightsError::NoWeights { dir });
        }
        Ok(SafetensorsDir { dir, config, files, tensors, listing })
    }

    /// The model shape, from the directory's `config.json`.
    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The mapped safetensors files.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|f| f.path.as_path())
    }

    /// Whether the checkpoint has tensor `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Header information of tensor `name`, if present.
    pub fn meta(&self, name: &str) -> Option<TensorMeta> {
        self.tensors.get(name).map(|e| TensorMeta {
            dtype: e.dtype.to_string(),
            shape: e.shape.clone(),
            file: self.files[e.file].path.clone(),
        })
    }

    /// Shard `shard` of tensor `name`, in the file's dtype. `expect_shape` is the FULL tensor's
    /// shape as the config implies it (Hugging Face layout); the result's shape is the shard's.
    pub fn read(&self, name: &str, expect_shape: &[usize], shard: Sharding) -> Result<HostTensor, WeightsError> {
        let p = self.pieces(name, expect_shape, shard)?;
        let mut bytes = Vec::with_capacity(p.slices.iter().map(|s| s.len()).sum());
        p.slices.iter().for_each(|s| bytes.extend_from_slice(s));
        Ok(HostTensor { dtype: p.dtype, shape: p.shape, bytes })
    }

    /// Like [`read`](Self::read), converted to `dtype` (e.g. the bytes a GPU engine uploads).
    pub fn read_as(
        &self,
        name: &str,
        expect_shape: &[usize],
        shard: Sharding,
        dtype: Dtype,
    ) -> Result<HostTensor, WeightsError> {
        let t = self.read(name, expect_shape, shard)?;
        Ok(if t.dtype == dtype { t } else { t.convert(dtype) })
    }

    /// Like [`read`](Self::read), as f32 values (converted straight from the mapped bytes).
    pub fn read_f32(&self, name: &str, expect_shape: &[usize], shard: Sharding) -> Result<Vec<f32>, WeightsError> {
        let p = self.pieces(name, expect_shape, shard)?;
        let mut out = Vec::with_capacity(p.slices.iter().map(|s| s.len()).sum::<usize>() / p.dtype.size());
        p.slices.iter().for_each(|s| decode_f32(p.dtype, s, &mut out));
        Ok(out)
    }

    /// Like [`read`](Self::read), as IEEE half bits.
    pub fn read_f16_bits(&self, name: &str, expect_shape: &[usize], shard: Sharding) -> Result<Vec<u16>, WeightsError> {
        self.read_16(name, expect_shape, shard, Dtype::F16)
    }

    /// Like [`read`](Self::read), as bfloat16 bits.
    pub fn read_bf16_bits(
        &self,
        name: &str,
        expect_shape: &[usize],
        shard: Sharding,
    ) -> Result<Vec<u16>, WeightsError> {
        self.read_16(name, expect_shape, shard, Dtype::BF16)
    }

    fn read_16(
        &self,
        name: &str,
        expect_shape: &[usize],
        shard: Sharding,
        to: Dtype,
    ) -> Result<Vec<u16>, WeightsError> {
        let p = self.pieces(name, expect_shape, shard)?;
        let mut out = Vec::with_capacity(p.slices.iter().map(|s| s.len()).sum::<usize>() / p.dtype.size());
        p.slices.iter().for_each(|s| encode_16(p.dtype, to, s, &mut out));
        Ok(out)
    }

    /// Checks tensor `name` (present, supported dtype, `expect_shape`, shard within bounds) and
    /// locates the shard's bytes.
    fn pieces(&self, name: &str, expect_shape: &[usize], shard: Sharding) -> Result<Pieces<'_>, WeightsError> {
        let entry = self
            .tensors
            .get(name)
            .ok_or_else(|| WeightsError::MissingTensor { tensor: name.to_string(), place: self.listing.clone() })?;
        let file = &self.files[entry.file];
        let dtype = Dtype::from_header(entry.dtype).ok_or_else(|| WeightsError::Dtype {
            tensor: name.to_string(),
            path: file.path.clone(),
            dtype: entry.dtype.to_string(),
        })?;
        if entry.shape != expect_shape {
            return Err(WeightsError::Shape {
                tensor: name.to_string(),
                path: file.path.clone(),
                found: entry.shape.clone(),
                expected: expect_shape.to_vec(),
            });
        }
        let data = &file.map[file.data_start + entry.bytes.start..file.data_start + entry.bytes.end];
        let es = dtype.size();
        let bad_shard = || WeightsError::Shard {
            tensor: name.to_string(),
            path: file.path.clone(),
            shape: entry.shape.clone(),
            shard: shard.clone(),
        };
        let fits = |r: &Range<usize>, n: usize| r.start <= r.end && r.end <= n;
        let shape = &entry.shape;
        let (shape, slices) = match &shard {
            Sharding::Full => (shape.clone(), vec![data]),
            Sharding::Rows(r) => {
                if shape.is_empty() || !fits(r, shape[0]) {
                    return Err(bad_shard());
                }
                // Row-major: rows r are one contiguous byte range.
                // Checked: with 0 rows the other dimensions are not bounded by the file's size.
                let row_bytes = shape[1..].iter().try_fold(es, |a, &d| a.checked_mul(d));
                let piece = match row_bytes {
                    Some(b) => &data[r.start * b..r.end * b],
                    None if r.is_empty() => &data[..0],
                    None => return Err(bad_shard()),
                };
                let mut piece_shape = shape.clone();
                piece_shape[0] = r.len();
                (piece_shape, vec![piece])
            }
            Sharding::Cols(c) => {
                if shape.len() != 2 || !fits(c, shape[1]) {
                    return Err(bad_shard());
                }
                let (rows, cols) = (shape[0], shape[1]);
                // An empty column range has no bytes: no piece per row (a header may claim 2^60
                // rows of zero columns, which is zero bytes and a valid file).
                let pieces = if c.is_empty() {
                    Vec::new()
                } else {
                    (0..rows).map(|row| &data[(row * cols + c.start) * es..(row * cols + c.end) * es]).collect()
                };
                (vec![rows, c.len()], pieces)
            }
        };
        Ok(Pieces { dtype, shape, slices })
    }
}

fn entry(file: usize, info: &safetensors::tensor::TensorInfo) -> Entry {
    Entry { file, dtype: info.dtype, shape: info.shape.clone(), bytes: info.data_offsets.0..info.data_offsets.1 }
}

fn map_file(path: &Path) -> Result<MappedFile, WeightsError> {
    let io = |source| WeightsError::Io { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(io)?;
    // SAFETY: a read-only private mapping; see the note on SafetensorsDir about files changing
    // underneath it.
    let map = unsafe { Mmap::map(&file) }.map_err(io)?;
    Ok(MappedFile { path: path.to_path_buf(), map, data_start: 0 })
}

/// Parses and validates the header of a mapped file, records where its data section starts
/// (after the 8-byte length and the JSON header) and returns the header.
fn header(file: &mut MappedFile) -> Result<safetensors::tensor::Metadata, WeightsError> {
    let (n, meta) = SafeTensors::read_metadata(&file.map).map_err(|e| WeightsError::Header {
        path: file.path.clone(),
        reason: crate::engine::one_line(&header_reason(&e)),
    })?;
    file.data_start = 8 + n;
    Ok(meta)
}

fn header_reason(e: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::HeaderTooSmall => "shorter than the 8-byte header length".into(),
        E::HeaderTooLarge => "header length is too large".into(),
        E::InvalidHeaderLength => "header length runs past the end of the file".into(),
        E::InvalidHeader(_) => "header is not UTF-8".into(),
        E::InvalidHeaderDeserialization(err) => format!("header is not valid JSON: {err}"),
        E::MetadataIncompleteBuffer => "tensor data does not end where the file ends (truncated or padded file)".into(),
        E::InvalidOffset(name) => format!("tensor {name} has invalid data offsets"),
        E::TensorInvalidInfo => "a tensor's byte size does not match its shape and dtype".into(),
        other => format!("{other:?}"),
    }
}

/// Writes `tensors` as one safetensors file at `path` (the crate's serializer: tensors sorted by
/// dtype then name, header padded to 8 bytes). Each tensor's bytes must fill its shape.
pub fn write_safetensors(path: impl AsRef<Path>, tensors: &[(String, HostTensor)]) -> Result<(), WeightsError> {
    let path = path.as_ref();
    let err = |reason: String| WeightsError::Write { path: path.to_path_buf(), reason };
    let mut views = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let want = t.shape.iter().product::<usize>() * t.dtype.size();
        if t.bytes.len() != want {
            return Err(err(format!(
                "tensor {name} of shape {:?} {} needs {want} bytes, has {}",
                t.shape,
                t.dtype,
                t.bytes.len()
            )));
        }
        let view = safetensors::tensor::TensorView::new(t.dtype.to_header(), t.shape.clone(), &t.bytes)
            .map_err(|e| err(format!("tensor {name}: {e:?}")))?;
        views.push((name.as_str(), view));
    }
    safetensors::serialize_to_file(views, None, path).map_err(|e| err(format!("{e:?}")))
}

/// What the header of a file written by [`write_safetensors_streamed`] says about one tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorHeader {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl TensorHeader {
    /// Bytes of the tensor's data.
    pub fn byte_len(&self) -> u64 {
        self.shape.iter().product::<usize>() as u64 * self.dtype.size() as u64
    }
}

/// Counts the bytes written through it, so that each tensor can be checked against its header.
struct Counting<'a, W: Write> {
    inner: &'a mut W,
    bytes: u64,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes one safetensors file at `path` without holding its tensors in memory. The header comes
/// first: `metadata` as `__metadata__` (Hugging Face loaders want `{"format": "pt"}`), then every
/// tensor of `tensors` with its dtype, shape and data offsets, the tensors' data following each
/// other in the given order; the header is padded with spaces to a multiple of 8 bytes so that the
/// data starts aligned, as the format requires. Then `write_data(i, out)` appends tensor i's
/// little-endian bytes, for each i in order; each call must write exactly the tensor's
/// [`byte_len`](TensorHeader::byte_len), which is checked.
pub fn write_safetensors_streamed(
    path: impl AsRef<Path>,
    tensors: &[TensorHeader],
    metadata: &BTreeMap<String, String>,
    mut write_data: impl FnMut(usize, &mut dyn Write) -> std::io::Result<()>,
) -> Result<(), WeightsError> {
    let path = path.as_ref();
    let err = |reason: String| WeightsError::Write { path: path.to_path_buf(), reason };
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), serde_json::json!(metadata));
    }
    let mut offset = 0u64;
    for t in tensors {
        let end = offset + t.byte_len();
        let info = serde_json::json!({
            "dtype": t.dtype.name(),
            "shape": t.shape,
            "data_offsets": [offset, end],
        });
        if t.name == "__metadata__" || header.insert(t.name.clone(), info).is_some() {
            return Err(err(format!("tensor name {} is reserved or used twice", t.name)));
        }
        offset = end;
    }
    let mut json = serde_json::to_vec(&header).map_err(|e| err(e.to_string()))?;
    json.resize(json.len().next_multiple_of(8), b' ');

    let file = File::create(path).map_err(|e| err(e.to_string()))?;
    // Large writes go straight through; the buffer only gathers the small tensors (norms, biases).
    let mut out = BufWriter::with_capacity(1 << 20, file);
    out.write_all(&(json.len() as u64).to_le_bytes())
        .and_then(|()| out.write_all(&json))
        .map_err(|e| err(e.to_string()))?;
    for (i, t) in tensors.iter().enumerate() {
        let mut counting = Counting { inner: &mut out, bytes: 0 };
        write_data(i, &mut counting).map_err(|e| err(format!("tensor {}: {e}", t.name)))?;
        if counting.bytes != t.byte_len() {
            return Err(err(format!(
                "tensor {} of shape {:?} {} needs {} bytes, {} were written",
                t.name,
                t.shape,
                t.dtype,
                t.byte_len(),
                counting.bytes
            )));
        }
    }
    out.flush().map_err(|e| err(e.to_string()))
}

/// Writes a `model.safetensors.index.json` mapping each tensor name to its file name, with the
/// tensors' data size in bytes (`total_size`) as `save_pretrained` writes it.
pub fn write_index(
    path: impl AsRef<Path>,
    weight_map: &BTreeMap<String, String>,
    total_size: u64,
) -> Result<(), WeightsError> {
    let path = path.as_ref();
    let json = serde_json::json!({ "metadata": { "total_size": total_size }, "weight_map": weight_map });
    std::fs::write(path, serde_json::to_string_pretty(&json).unwrap_or_default())
        .map_err(|e| WeightsError::Write { path: path.to_path_buf(), reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A (rows, cols) tensor whose element (r, c) is r * cols + c (exact in F16 and BF16 up to
    /// 256).
    fn counting(rows: usize, cols: usize) -> Vec<f32> {
        (0..rows * cols).map(|i| i as f32).collect()
    }

    /// A model directory holding the tiny preset's config.json and `tensors` in one file.
    fn model_dir(tensors: &[(String, HostTensor)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::preset("tiny").unwrap();
        std::fs::write(dir.path().join("config.json"), serde_json::to_string(&cfg).unwrap()).unwrap();
        write_safetensors(dir.path().join(SINGLE_FILE), tensors).unwrap();
        dir
    }

    #[test]
    fn shards_of_every_dtype() {
        let full = counting(6, 5);
        let f32_t = HostTensor::from_f32(vec![6, 5], &full);
        let tensors: Vec<(String, HostTensor)> = [Dtype::F32, Dtype::F16, Dtype::BF16]
            .iter()
            .map(|&d| (format!("w.{d}"), f32_t.convert(d)))
            .chain([("bias".to_string(), HostTensor::from_f32(vec![4], &[0.5, -1.0, 2.0, 3.25]))])
            .collect();
        let dir = model_dir(&tensors);
        let st = SafetensorsDir::open(dir.path()).unwrap();
        assert_eq!(st.names(), vec!["bias", "w.BF16", "w.F16", "w.F32"]);
        for d in [Dtype::F32, Dtype::F16, Dtype::BF16] {
            let name = format!("w.{d}");
            assert_eq!(st.meta(&name).unwrap().dtype, d.name());
            // Full, as stored and as f32.
            let t = st.read(&name, &[6, 5], Sharding::Full).unwrap();
            assert_eq!((t.dtype, t.shape.clone(), t.len()), (d, vec![6, 5], 30));
            assert_eq!(t.to_f32(), full);
            // Rows 2..4: elements 10..20.
            let rows = st.read_f32(&name, &[6, 5], Sharding::Rows(2..4)).unwrap();
            assert_eq!(rows, full[10..20].to_vec());
            let t = st.read(&name, &[6, 5], Sharding::Rows(2..4)).unwrap();
            assert_eq!(t.shape, vec![2, 5]);
            // Columns 1..3 of every row.
            let cols = st.read_f32(&name, &[6, 5], Sharding::Cols(1..3)).unwrap();
            let want: Vec<f32> = (0..6).flat_map(|r| [r * 5 + 1, r * 5 + 2]).map(|v| v as f32).collect();
            assert_eq!(cols, want);
            assert_eq!(st.read(&name, &[6, 5], Sharding::Cols(1..3)).unwrap().shape, vec![6, 2]);
            // 16-bit views for a GPU upload, whatever the stored dtype.
            let f16_bits = st.read_f16_bits(&name, &[6, 5], Sharding::Cols(1..3)).unwrap();
            let bf16_bits = st.read_bf16_bits(&name, &[6, 5], Sharding::Cols(1..3)).unwrap();
            assert_eq!(f16_bits, want.iter().map(|&v| f16::from_f32(v).to_bits()).collect::<Vec<_>>());
            assert_eq!(bf16_bits, want.iter().map(|&v| bf16::from_f32(v).to_bits()).collect::<Vec<_>>());
            let up = st.read_as(&name, &[6, 5], Sharding::Rows(0..1), Dtype::BF16).unwrap();
            assert_eq!(up.dtype, Dtype::BF16);
            assert_eq!(up.bytes.len(), 10);
            assert_eq!(up.to_f32(), full[..5].to_vec());
        }
        // 1-D: an element range.
        assert_eq!(st.read_f32("bias", &[4], Sharding::Rows(1..3)).unwrap(), vec![-1.0, 2.0]);
        // f32 → f16/bf16 rounds to nearest even.
        let x = HostTensor::from_f32(vec![2], &[1.0 + 1.0 / 4096.0, 0.1]);
        assert_eq!(x.to_f16_bits(), vec![f16::ONE.to_bits(), f16::from_f32(0.1).to_bits()]);
        assert_eq!(x.to_bf16_bits()[0], bf16::ONE.to_bits());
    }

    #[test]
    fn index_spreads_tensors_over_files() {
        let dir = model_dir(&[]);
        std::fs::remove_file(dir.path().join(SINGLE_FILE)).unwrap();
        let a = HostTensor::from_f32(vec![2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let b = HostTensor::from_f32(vec![3], &[5.0, 6.0, 7.0]);
        write_safetensors(dir.path().join("part-1.safetensors"), &[("a".into(), a)]).unwrap();
        write_safetensors(dir.path().join("part-2.safetensors"), &[("b".into(), b)]).unwrap();
        let map: BTreeMap<String, String> =
            [("a".to_string(), "part-1.safetensors".to_string()), ("b".to_string(), "part-2.safetensors".to_string())]
                .into();
        write_index(dir.path().join(INDEX_FILE), &map, 28).unwrap();
        let st = SafetensorsDir::open(dir.path()).unwrap();
        assert_eq!(st.files().count(), 2);
        assert!(st.meta("b").unwrap().file.ends_with("part-2.safetensors"));
        assert_eq!(st.read_f32("a", &[2, 2], Sharding::Cols(1..2)).unwrap(), vec![2.0, 4.0]);
        assert_eq!(st.read_f32("b", &[3], Sharding::Full).unwrap(), vec![5.0, 6.0, 7.0]);
        let err = st.read("c", &[1], Sharding::Full).err().unwrap().to_string();
        assert!(err.starts_with("tensor c not found in ") && err.ends_with(INDEX_FILE), "{err}");

        // An index naming a file that is not there.
        let map: BTreeMap<String, String> = [("a".to_string(), "part-9.safetensors".to_string())].into();
        write_index(dir.path().join(INDEX_FILE), &map, 28).unwrap();
        let err = SafetensorsDir::open(dir.path()).err().unwrap().to_string();
        assert!(err.starts_with("cannot read ") && err.contains("part-9.safetensors"), "{err}");
        // An index putting a tensor in a file that lacks it.
        let map: BTreeMap<String, String> = [("b".to_string(), "part-1.safetensors".to_string())].into();
        write_index(dir.path().join(INDEX_FILE), &map, 28).unwrap();
        let err = SafetensorsDir::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("weight_map puts tensor b in part-1.safetensors, whose header lacks it"), "{err}");
        // An index pointing outside the directory.
        let map: BTreeMap<String, String> = [("b".to_string(), "../part-2.safetensors".to_string())].into();
        write_index(dir.path().join(INDEX_FILE), &map, 28).unwrap();
        let err = SafetensorsDir::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("is not inside the directory"), "{err}");
        // Not an index at all.
        std::fs::write(dir.path().join(INDEX_FILE), "{\"metadata\": {}}").unwrap();
        let err = SafetensorsDir::open(dir.path()).err().unwrap().to_string();
        assert!(err.starts_with("invalid checkpoint index ") && err.contains("weight_map"), "{err}");
    }

    #[test]
    fn errors_name_the_file_the_tensor_and_the_expectation() {
        // Missing directory / config / weights.
        let dir = tempfile::tempdir().unwrap();
        let err = SafetensorsDir::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("config.json") && err.starts_with("cannot read model config"), "{err}");
        std::fs::write(
            dir.path().join("config.json"),
            serde_json::to_string(&Config::preset("tiny").unwrap()).unwrap(),
        )
        .unwrap();
        let err = SafetensorsDir::open(dir.path()).err().unwrap().to_string();
        assert_eq!(
            err,
            format!(
                "no weights in {}: expected model.safetensors or model.safetensors.index.json \
                 (Hugging Face safetensors)",
                dir.path().display()
            )
        );

        // Missing tensor, wrong shape, bad shard.
        let w = HostTensor::from_f32(vec![2, 3], &[0.0; 6]);
        let dir = model_dir(&[("w".into(), w)]);
        let file = dir.path().join(SINGLE_FILE);
        let st = SafetensorsDir::open(dir.path()).unwrap();
        let err = st.read("model.norm.weight", &[64], Sharding::Full).err().unwrap();
        assert_eq!(err.to_string(), format!("tensor model.norm.weight not found in {}", file.display()));
        let err = st.read("w", &[3, 2], Sharding::Full).err().unwrap();
        assert_eq!(
            err.to_string(),
            format!("tensor w in {} has shape [2, 3], expected [3, 2] (from config.json)", file.display())
        );
        let err = st.read("w", &[2, 3], Sharding::Rows(1..3)).err().unwrap();
        assert_eq!(
            err.to_string(),
            format!("tensor w in {} of shape [2, 3]: cannot take shard rows 1..3", file.display())
        );
        assert!(st.read("w", &[2, 3], Sharding::Cols(2..4)).is_err());
        assert!(st.read("w", &[2, 3], Sharding::Rows(0..2)).is_ok());
        drop(st);

        // Unsupported dtype (written with the crate's own serializer).
        let ints = [1i32, 2, 3].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::I32, vec![3], &ints).unwrap();
        safetensors::serialize_to_file([("ids", view)], None, &file).unwrap();
        let st = SafetensorsDir::open(dir.path()).unwrap();
        let err = st.read_f32("ids", &[3], Sharding::Full).err().unwrap();
        assert_eq!(
            err.to_string(),
            format!("tensor ids in {} has dtype I32, expected F32, F16 or BF16", file.display())
        );
        drop(st);

        // Truncated and empty files fail at open.
        let bytes = std::fs::read(&file).unwrap();
        std::fs::write(&file, &bytes[..bytes.len() - 1]).unwrap();
        let err = SafetensorsDir::open(dir.path()).err().unwrap().to_string();
        assert_eq!(
            err,
            format!(
                "invalid safetensors file {}: tensor data does not end where the file ends \
                 (truncated or padded file)",
                file.display()
            )
        );
        std::fs::write(&file, b"").unwrap();
        let err = SafetensorsDir::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("shorter than the 8-byte header length"), "{err}");

        // The writer refuses bytes that do not fill the shape.
        let bad = HostTensor { dtype: Dtype::F16, shape: vec![3], bytes: vec![0; 4] };
        let err = write_safetensors(&file, &[("x".into(), bad)]).err().unwrap().to_string();
        assert!(err.contains("tensor x of shape [3] F16 needs 6 bytes, has 4"), "{err}");
    }

    /// The streamed writer's files read back through the crate, tensor by tensor; it refuses a
    /// tensor whose bytes do not fill its shape, and a name used twice.
    #[test]
    fn streamed_files_read_back_and_mistakes_are_refused() {
        let dir = model_dir(&[]);
        let file = dir.path().join(SINGLE_FILE);
        let h = |name: &str, dtype, shape: &[usize]| TensorHeader { name: name.into(), dtype, shape: shape.to_vec() };
        let tensors = [h("w", Dtype::F16, &[2, 3]), h("bias", Dtype::F32, &[3])];
        let w = HostTensor::from_f32(vec![2, 3], &counting(2, 3)).convert(Dtype::F16);
        let bias = HostTensor::from_f32(vec![3], &[0.5, -1.0, 2.0]);
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        write_safetensors_streamed(&file, &tensors, &meta, |i, out| {
            out.write_all(if i == 0 { &w.bytes } else { &bias.bytes })
        })
        .unwrap();
        let bytes = std::fs::read(&file).unwrap();
        let (n, _) = SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(n % 8, 0, "the data starts 8-byte aligned");
        let st = SafetensorsDir::open(dir.path()).unwrap();
        assert_eq!(st.read("w", &[2, 3], Sharding::Full).unwrap(), w);
        assert_eq!(st.read("bias", &[3], Sharding::Full).unwrap(), bias);
        drop(st);

        let err = write_safetensors_streamed(&file, &tensors, &meta, |_, out| out.write_all(&[0; 6]))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("tensor w of shape [2, 3] F16 needs 12 bytes, 6 were written"), "{err}");
        let twice = [h("w", Dtype::F16, &[1]), h("w", Dtype::F16, &[1])];
        let err = write_safetensors_streamed(&file, &twice, &meta, |_, out| out.write_all(&[0; 2]))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("tensor name w is reserved or used twice"), "{err}");
    }
}
