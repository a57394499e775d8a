//! The safetensors header, read and checked before any weights are mapped: a truncated or
//! corrupt file, or tensors that do not match config.json, get an error naming the file, the
//! tensor and the field, instead of a failure deep inside the loader. Pure (no candle), and
//! the target of the `safetensors_header` fuzzer.
//!
//! Format: 8 bytes little-endian header length `n`, then `n` bytes of JSON
//! `{"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}`,
//! then the data; offsets are relative to the end of the header.

use crate::spec::ModelSpec;
use serde::Deserialize;
use std::collections::BTreeMap;

/// The safetensors crate's limit on the header's size.
pub const MAX_HEADER: u64 = 100_000_000;

/// One tensor as the header describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub begin: u64,
    pub end: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

/// Bytes per element of a safetensors dtype (None: unknown).
fn dtype_bytes(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" => 1,
        "U16" | "I16" | "F16" | "BF16" => 2,
        "U32" | "I32" | "F32" => 4,
        "U64" | "I64" | "F64" => 8,
        _ => return None,
    })
}

/// The header's length from the first 8 bytes of a file of `file_len` bytes.
///
/// # Errors
/// Why the file cannot hold a header.
pub fn header_len(prefix: &[u8], file_len: u64) -> Result<u64, String> {
    let Some(n) = prefix.get(..8) else {
        return Err(format!(
            "{file_len} bytes: too short for a safetensors header (8-byte length first)"
        ));
    };
    let mut le = [0u8; 8];
    le.copy_from_slice(n);
    let n = u64::from_le_bytes(le);
    if n > MAX_HEADER {
        return Err(format!(
            "header length {n} bytes: over the {MAX_HEADER}-byte limit (not a safetensors file?)"
        ));
    }
    if n.checked_add(8).is_none_or(|end| end > file_len) {
        return Err(format!(
            "header length {n} bytes, but the file has {file_len}: truncated"
        ));
    }
    Ok(n)
}

/// Parse and check a header: `header` is the JSON (after the 8-byte length), `data_len` the
/// bytes after it. Every tensor's offsets must lie within the data and match its dtype and
/// shape.
///
/// # Errors
/// The tensor and field at fault.
pub fn parse(header: &[u8], data_len: u64) -> Result<Vec<Entry>, String> {
    let text = std::str::from_utf8(header).map_err(|e| format!("header: not UTF-8 ({e})"))?;
    let raw: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|e| format!("header: not a JSON object ({e})"))?;
    let mut out = Vec::with_capacity(raw.len());
    for (name, v) in raw {
        if name == "__metadata__" {
            // The safetensors format (and the crate candle reads it with) wants names to
            // strings here; anything else fails inside candle without naming the file.
            let strings = v
                .as_object()
                .is_some_and(|m| m.values().all(serde_json::Value::is_string));
            if !strings {
                return Err("header: __metadata__ must map names to strings".into());
            }
            continue;
        }
        let e: RawEntry =
            serde_json::from_value(v).map_err(|err| format!("tensor {name:?}: {err}"))?;
        let size = dtype_bytes(&e.dtype).ok_or_else(|| {
            format!(
                "tensor {name:?}: dtype {:?} is not a safetensors dtype",
                e.dtype
            )
        })?;
        let [begin, end] = e.data_offsets;
        if begin > end || end > data_len {
            return Err(format!(
                "tensor {name:?}: data_offsets [{begin}, {end}] outside the {data_len} data bytes \
                 (truncated file?)"
            ));
        }
        let bytes = e
            .shape
            .iter()
            .try_fold(size, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| format!("tensor {name:?}: shape {:?} overflows", e.shape))?;
        if bytes != end - begin {
            return Err(format!(
                "tensor {name:?}: shape {:?} of {} needs {bytes} bytes, data_offsets give {}",
                e.shape,
                e.dtype,
                end - begin
            ));
        }
        out.push(Entry {
            name,
            dtype: e.dtype,
            shape: e.shape,
            begin,
            end,
        });
    }
    // The data of the tensors, in offset order, must tile the data section exactly: no
    // overlap, no gap (as the safetensors crate requires when candle maps the file).
    let mut by_offset: Vec<&Entry> = out.iter().collect();
    by_offset.sort_by_key(|e| (e.begin, e.end));
    let mut expected = 0;
    for e in by_offset {
        if e.begin != expected {
            return Err(format!(
                "tensor {:?}: data_offsets [{}, {}] {} the previous tensor's data, which ends \
                 at {expected}",
                e.name,
                e.begin,
                e.end,
                if e.begin < expected {
                    "overlap"
                } else {
                    "leave a gap after"
                }
            ));
        }
        expected = e.end;
    }
    if expected != data_len {
        return Err(format!(
            "header: the tensors' data ends at byte {expected} of the {data_len} data bytes"
        ));
    }
    Ok(out)
}

/// The element types a weight may have: what candle loads and casts to the model dtype.
const WEIGHT_DTYPES: [&str; 4] = ["F32", "F16", "BF16", "F64"];

/// Check a whole file's bytes (header and data): what the fuzzer calls.
///
/// # Errors
/// As [`header_len`] and [`parse`].
pub fn parse_file(bytes: &[u8]) -> Result<Vec<Entry>, String> {
    let n = header_len(bytes, bytes.len() as u64)?;
    let (start, end) = (8usize, 8 + n as usize);
    parse(&bytes[start..end], (bytes.len() - end) as u64)
}

/// Every tensor the model needs is in `entries` with the shape config.json implies.
///
/// # Errors
/// The first tensor missing or of the wrong shape.
pub fn check_against(
    spec: &ModelSpec,
    entries: &BTreeMap<String, Entry>,
) -> Result<(), (String, String)> {
    for t in spec.tensors() {
        let Some(e) = entries.get(&t.name) else {
            return Err((t.name.clone(), "missing from the checkpoint".into()));
        };
        if !WEIGHT_DTYPES.contains(&e.dtype.as_str()) {
            return Err((
                t.name.clone(),
                format!(
                    "dtype {} cannot be a weight ({} expected)",
                    e.dtype,
                    WEIGHT_DTYPES.join(", ")
                ),
            ));
        }
        if e.shape != t.shape {
            return Err((
                t.name.clone(),
                format!(
                    "shape {:?} in the checkpoint, {:?} expected from config.json",
                    e.shape, t.shape
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: usize) -> Vec<u8> {
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.resize(b.len() + data, 0);
        b
    }

    #[test]
    fn a_good_header_parses() {
        let f = file(
            r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]}}"#,
            12,
        );
        let e = parse_file(&f).expect("valid");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].shape, vec![2, 3]);
    }

    #[test]
    fn bad_headers_name_what_is_wrong() {
        for (bytes, says) in [
            (vec![1u8, 2, 3], "too short"),
            (file("{}", 0)[..5].to_vec(), "too short"),
            (u64::MAX.to_le_bytes().to_vec(), "over the"),
            (
                {
                    let mut f = file("{}", 0);
                    f.truncate(9);
                    f
                },
                "truncated",
            ),
            (file("[1]", 0), "not a JSON object"),
            (
                file(
                    r#"{"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}}"#,
                    1,
                ),
                "not a safetensors dtype",
            ),
            (
                file(
                    r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
                    8,
                ),
                "outside the 8 data bytes",
            ),
            (
                file(
                    r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}"#,
                    16,
                ),
                "needs 12 bytes",
            ),
            (
                file(
                    r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,16]}}"#,
                    16,
                ),
                "overflows",
            ),
            (
                file(
                    r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[16,0]}}"#,
                    16,
                ),
                "outside",
            ),
            (
                file(r#"{"a":{"dtype":"F32","shape":[4]}}"#, 16),
                "data_offsets",
            ),
            // What failed inside candle before, without naming the file.
            (
                file(
                    r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#,
                    16,
                ),
                "tensor \"b\": data_offsets [8, 16] overlap",
            ),
            (
                file(
                    r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#,
                    16,
                ),
                "leave a gap",
            ),
            (
                file(
                    r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
                    16,
                ),
                "ends at byte 8 of the 16",
            ),
            (
                file(
                    r#"{"__metadata__":{"format":1},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
                    8,
                ),
                "__metadata__ must map names to strings",
            ),
        ] {
            let e = parse_file(&bytes).expect_err(says);
            assert!(e.contains(says), "{e} (wanted {says})");
        }
    }

    /// A weight stored as BOOL (or any type candle will not cast to a float) is named with
    /// its tensor before anything is loaded.
    #[test]
    fn a_weight_of_a_non_float_dtype_is_named() {
        let spec = crate::spec::ModelSpec::from_json_str(
            crate::TINY_CONFIG,
            std::path::Path::new(crate::TINY_CONFIG_PATH),
        )
        .expect("tiny");
        let mut entries = BTreeMap::new();
        for t in spec.tensors() {
            let n: u64 = t.shape.iter().product();
            entries.insert(
                t.name.clone(),
                Entry {
                    name: t.name.clone(),
                    dtype: if t.name.ends_with("norm.weight") {
                        "BOOL"
                    } else {
                        "F32"
                    }
                    .into(),
                    shape: t.shape.clone(),
                    begin: 0,
                    end: n * 4,
                },
            );
        }
        let (name, reason) = check_against(&spec, &entries).expect_err("BOOL");
        assert!(name.ends_with("norm.weight"), "{name}");
        assert!(
            reason.starts_with("dtype BOOL cannot be a weight"),
            "{reason}"
        );
    }
}
