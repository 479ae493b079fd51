//! `zarr.json` of a zarr v3 array, parsed and validated.

use serde_json::{Map, Value};

use super::ZarrError;
use super::codec::{
    BytesCodec, CodecChain, MAX_CHUNK_BYTES, MAX_INNER_CHUNKS, Serializer, Sharding,
};
use super::dtype::DataType;

/// How chunk coordinates become keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkKeyEncoding {
    /// `default`: `c` then each coordinate, joined by the separator (`c/1/2`, `c.1.2`; `c`
    /// for a 0-d array).
    Default {
        /// `/` or `.`.
        separator: char,
    },
    /// `v2`: the coordinates joined by the separator (`1.2`, `1/2`; `0` for a 0-d array).
    V2 {
        /// `.` or `/`.
        separator: char,
    },
}

impl ChunkKeyEncoding {
    /// The key of the chunk at `coords`, relative to the array.
    pub fn key(&self, coords: &[u64]) -> String {
        let (mut key, separator) = match *self {
            ChunkKeyEncoding::Default { separator } => (String::from("c"), separator),
            ChunkKeyEncoding::V2 { separator } => {
                if coords.is_empty() {
                    return "0".into();
                }
                (String::new(), separator)
            }
        };
        for (i, c) in coords.iter().enumerate() {
            if i > 0 || matches!(self, ChunkKeyEncoding::Default { .. }) {
                key.push(separator);
            }
            key.push_str(&c.to_string());
        }
        key
    }
}

/// The metadata of a zarr v3 array (`zarr.json`), validated for reading.
#[derive(Debug, Clone)]
pub struct ArrayMetadata {
    /// The array's shape.
    pub shape: Vec<u64>,
    /// The element type.
    pub data_type: DataType,
    /// The regular chunk grid's chunk shape (for a sharded array: the shard shape).
    pub chunk_shape: Vec<u64>,
    /// How chunk coordinates become keys.
    pub chunk_key_encoding: ChunkKeyEncoding,
    /// The fill value as little-endian bytes of one element.
    pub(crate) fill_value: Vec<u8>,
    /// The codecs of a chunk (or shard).
    pub(crate) codecs: CodecChain,
}

impl ArrayMetadata {
    /// The inner chunk shape of a sharded array, `None` when the array is not sharded.
    pub fn inner_chunk_shape(&self) -> Option<&[u64]> {
        match &self.codecs.serializer {
            Serializer::Sharding(s) => Some(&s.inner_shape),
            Serializer::Bytes { .. } => None,
        }
    }

    /// Whether a sharded array's index is at the start of each shard (`None`: not sharded).
    pub fn index_at_start(&self) -> Option<bool> {
        match &self.codecs.serializer {
            Serializer::Sharding(s) => Some(s.index_at_start),
            Serializer::Bytes { .. } => None,
        }
    }

    /// The codec names, in encoding order (for a sharded array, the outer chain).
    pub fn codec_names(&self) -> Vec<&'static str> {
        self.codecs.names()
    }

    /// The number of chunks (shards for a sharded array) along each dimension.
    pub fn grid_shape(&self) -> Vec<u64> {
        self.shape
            .iter()
            .zip(&self.chunk_shape)
            .map(|(s, c)| s.div_ceil(*c))
            .collect()
    }

    /// Parses and validates `zarr.json` read from `key`.
    pub fn parse(key: &str, json: &[u8]) -> Result<ArrayMetadata, ZarrError> {
        let root: Value = serde_json::from_slice(json).map_err(|e| ZarrError::Metadata {
            key: key.to_string(),
            field: "(document)".into(),
            value: String::from_utf8_lossy(&json[..json.len().min(80)]).into_owned(),
            reason: format!("not valid JSON: {e}"),
        })?;
        let cx = Cx { key };
        let Value::Object(root) = &root else {
            return Err(cx.bad("(document)", &root, "not a JSON object"));
        };

        let format = cx.field(root, "zarr_format")?;
        if format.as_u64() != Some(3) {
            return Err(cx.bad(
                "zarr_format",
                format,
                "unsupported: only zarr format 3 is read",
            ));
        }
        let node = cx.field(root, "node_type")?;
        if node.as_str() != Some("array") {
            return Err(cx.bad("node_type", node, "not an array"));
        }

        let shape = cx.shape(cx.field(root, "shape")?, "shape", false)?;

        let dt_value = cx.field(root, "data_type")?;
        let data_type = dt_value
            .as_str()
            .and_then(DataType::from_name)
            .ok_or_else(|| {
                cx.bad(
                    "data_type",
                    dt_value,
                    "unsupported: expected bool, int8..int64, uint8..uint64, float32 or float64",
                )
            })?;

        let grid = cx.field(root, "chunk_grid")?;
        let (grid_name, grid_config) = cx.named(grid, "chunk_grid")?;
        if grid_name != "regular" {
            return Err(cx.bad(
                "chunk_grid.name",
                &Value::String(grid_name.into()),
                "unsupported: only the regular chunk grid is read",
            ));
        }
        let chunk_shape_value =
            grid_config
                .and_then(|c| c.get("chunk_shape"))
                .ok_or_else(|| {
                    cx.bad(
                        "chunk_grid.configuration.chunk_shape",
                        &Value::Null,
                        "missing",
                    )
                })?;
        let chunk_shape = cx.shape(
            chunk_shape_value,
            "chunk_grid.configuration.chunk_shape",
            true,
        )?;
        if chunk_shape.len() != shape.len() {
            return Err(cx.bad(
                "chunk_grid.configuration.chunk_shape",
                chunk_shape_value,
                &format!(
                    "has {} dimensions, the shape {}",
                    chunk_shape.len(),
                    shape.len()
                ),
            ));
        }

        let chunk_key_encoding = match root.get("chunk_key_encoding") {
            None => ChunkKeyEncoding::Default { separator: '/' },
            Some(v) => {
                let (name, config) = cx.named(v, "chunk_key_encoding")?;
                let separator = match config.and_then(|c| c.get("separator")) {
                    None => None,
                    Some(Value::String(s)) if s == "/" || s == "." => s.chars().next(),
                    Some(other) => {
                        return Err(cx.bad(
                            "chunk_key_encoding.configuration.separator",
                            other,
                            "must be \"/\" or \".\"",
                        ));
                    }
                };
                match name {
                    "default" => ChunkKeyEncoding::Default {
                        separator: separator.unwrap_or('/'),
                    },
                    "v2" => ChunkKeyEncoding::V2 {
                        separator: separator.unwrap_or('.'),
                    },
                    other => {
                        return Err(cx.bad(
                            "chunk_key_encoding.name",
                            &Value::String(other.into()),
                            "unsupported: expected \"default\" or \"v2\"",
                        ));
                    }
                }
            }
        };

        let fill = cx.field(root, "fill_value")?;
        let fill_value = data_type
            .parse_fill(fill)
            .map_err(|reason| cx.bad("fill_value", fill, &reason))?;

        let codecs_value = cx.field(root, "codecs")?;
        let codecs = cx.chain(codecs_value, "codecs", &chunk_shape, data_type, true)?;

        if let Some(t) = root.get("storage_transformers")
            && t.as_array().is_none_or(|a| !a.is_empty())
        {
            return Err(cx.bad(
                "storage_transformers",
                t,
                "unsupported: storage transformers are not read",
            ));
        }
        const KNOWN: [&str; 11] = [
            "zarr_format",
            "node_type",
            "shape",
            "data_type",
            "chunk_grid",
            "chunk_key_encoding",
            "fill_value",
            "codecs",
            "attributes",
            "dimension_names",
            "storage_transformers",
        ];
        for (name, value) in root {
            let may_ignore = value.get("must_understand") == Some(&Value::Bool(false));
            if !KNOWN.contains(&name.as_str()) && !may_ignore {
                return Err(cx.bad(
                    name,
                    value,
                    "unsupported extension (it does not say \"must_understand\": false)",
                ));
            }
        }

        Ok(ArrayMetadata {
            shape,
            data_type,
            chunk_shape,
            chunk_key_encoding,
            fill_value,
            codecs,
        })
    }
}

/// A codec or grid entry: its name and configuration.
type Named<'v> = (&'v str, Option<&'v Map<String, Value>>);

/// Parsing context: the key the document came from, for errors.
struct Cx<'a> {
    key: &'a str,
}

fn render(value: &Value) -> String {
    let s = value.to_string();
    if s.len() > 120 {
        let cut = (0..=117)
            .rev()
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(0);
        format!("{}...", &s[..cut])
    } else {
        s
    }
}

impl Cx<'_> {
    fn bad(&self, field: &str, value: &Value, reason: &str) -> ZarrError {
        ZarrError::Metadata {
            key: self.key.to_string(),
            field: field.to_string(),
            value: render(value),
            reason: reason.to_string(),
        }
    }

    fn field<'v>(&self, obj: &'v Map<String, Value>, name: &str) -> Result<&'v Value, ZarrError> {
        obj.get(name)
            .ok_or_else(|| self.bad(name, &Value::Null, "missing"))
    }

    /// A list of non-negative integers (positive when `positive`).
    fn shape(&self, value: &Value, field: &str, positive: bool) -> Result<Vec<u64>, ZarrError> {
        let items = value
            .as_array()
            .ok_or_else(|| self.bad(field, value, "not a list of integers"))?;
        let mut out = Vec::with_capacity(items.len().min(64));
        for item in items {
            match item.as_u64() {
                Some(0) if positive => {
                    return Err(self.bad(field, value, "a chunk dimension must be at least 1"));
                }
                Some(n) => out.push(n),
                None => return Err(self.bad(field, value, "not a list of non-negative integers")),
            }
        }
        if out.len() > 32 {
            return Err(self.bad(field, value, "more than 32 dimensions"));
        }
        if out
            .iter()
            .try_fold(1u64, |acc, &n| acc.checked_mul(n))
            .is_none()
        {
            return Err(self.bad(field, value, "the element count overflows 64 bits"));
        }
        Ok(out)
    }

    /// `{"name": ..., "configuration": {...}}` or the short form `"name"`.
    fn named<'v>(&self, value: &'v Value, field: &str) -> Result<Named<'v>, ZarrError> {
        match value {
            Value::String(name) => Ok((name, None)),
            Value::Object(obj) => {
                let name = obj.get("name").and_then(Value::as_str).ok_or_else(|| {
                    self.bad(&format!("{field}.name"), value, "missing or not a string")
                })?;
                let config = match obj.get("configuration") {
                    None => None,
                    Some(Value::Object(c)) => Some(c),
                    Some(other) => {
                        return Err(self.bad(
                            &format!("{field}.configuration"),
                            other,
                            "not an object",
                        ));
                    }
                };
                Ok((name, config))
            }
            other => Err(self.bad(field, other, "not a name or an object with a name")),
        }
    }

    /// A codec chain for chunks of `chunk_shape`.
    fn chain(
        &self,
        value: &Value,
        field: &str,
        chunk_shape: &[u64],
        data_type: DataType,
        allow_sharding: bool,
    ) -> Result<CodecChain, ZarrError> {
        let items = value
            .as_array()
            .ok_or_else(|| self.bad(field, value, "not a list of codecs"))?;
        let element_size = data_type.size() as u64;
        let elements: u64 = chunk_shape.iter().product();
        if elements.saturating_mul(element_size) > MAX_CHUNK_BYTES {
            return Err(self.bad(
                field,
                &Value::from(chunk_shape.to_vec()),
                &format!(
                    "a chunk of this shape holds {} bytes, more than the {MAX_CHUNK_BYTES} this reader decodes",
                    elements.saturating_mul(element_size)
                ),
            ));
        }
        let mut shape = chunk_shape.to_vec();
        let mut transposes = Vec::new();
        let mut serializer = None;
        let mut compressors: Vec<BytesCodec> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let here = format!("{field}[{i}]");
            let (name, config) = self.named(item, &here)?;
            let get = |k: &str| config.and_then(|c| c.get(k));
            match name {
                "transpose" => {
                    if serializer.is_some() {
                        return Err(self.bad(
                            &format!("{here}.name"),
                            &Value::from(name),
                            "an array-to-array codec after the array-to-bytes codec",
                        ));
                    }
                    let order_field = format!("{here}.configuration.order");
                    let n = shape.len();
                    let order: Vec<usize> = match get("order") {
                        Some(Value::String(s)) if s == "C" => (0..n).collect(),
                        Some(Value::String(s)) if s == "F" => (0..n).rev().collect(),
                        Some(Value::Array(a)) => {
                            let order: Option<Vec<usize>> =
                                a.iter().map(|v| v.as_u64().map(|v| v as usize)).collect();
                            let order = order.unwrap_or_default();
                            let mut seen = vec![false; n];
                            let valid = order.len() == n
                                && order
                                    .iter()
                                    .all(|&o| o < n && !std::mem::replace(&mut seen[o], true));
                            if !valid {
                                return Err(self.bad(
                                    &order_field,
                                    get("order").unwrap_or(&Value::Null),
                                    &format!("not a permutation of 0..{n}"),
                                ));
                            }
                            order
                        }
                        other => {
                            return Err(self.bad(
                                &order_field,
                                other.unwrap_or(&Value::Null),
                                "missing or not a list",
                            ));
                        }
                    };
                    let next: Vec<u64> = order.iter().map(|&o| shape[o]).collect();
                    transposes.push((order, std::mem::replace(&mut shape, next)));
                }
                "bytes" | "sharding_indexed" => {
                    if serializer.is_some() {
                        return Err(self.bad(
                            &format!("{here}.name"),
                            &Value::from(name),
                            "a second array-to-bytes codec",
                        ));
                    }
                    if name == "bytes" {
                        let big_endian = match get("endian") {
                            Some(Value::String(e)) if e == "little" => false,
                            Some(Value::String(e)) if e == "big" => true,
                            None if element_size == 1 => false,
                            other => {
                                return Err(self.bad(
                                    &format!("{here}.configuration.endian"),
                                    other.unwrap_or(&Value::Null),
                                    &format!(
                                        "must be \"little\" or \"big\" for {data_type} elements"
                                    ),
                                ));
                            }
                        };
                        serializer = Some(Serializer::Bytes { big_endian });
                    } else {
                        if !allow_sharding {
                            return Err(self.bad(
                                &format!("{here}.name"),
                                &Value::from(name),
                                "unsupported: nested sharding",
                            ));
                        }
                        if !transposes.is_empty() {
                            return Err(self.bad(
                                &format!("{field}[0].name"),
                                &Value::from("transpose"),
                                "unsupported: an array-to-array codec before sharding_indexed",
                            ));
                        }
                        let sharding = self.sharding(config, &here, &shape, data_type)?;
                        serializer = Some(Serializer::Sharding(Box::new(sharding)));
                    }
                }
                "gzip" | "zstd" | "crc32c" => {
                    if serializer.is_none() {
                        return Err(self.bad(
                            &format!("{here}.name"),
                            &Value::from(name),
                            "a bytes-to-bytes codec before the array-to-bytes codec",
                        ));
                    }
                    if matches!(serializer, Some(Serializer::Sharding(_))) {
                        return Err(self.bad(
                            &format!("{here}.name"),
                            &Value::from(name),
                            "unsupported: a codec after sharding_indexed (a shard could not be read in parts)",
                        ));
                    }
                    compressors.push(match name {
                        "gzip" => BytesCodec::Gzip,
                        "zstd" => BytesCodec::Zstd,
                        _ => BytesCodec::Crc32c,
                    });
                }
                other => {
                    return Err(self.bad(
                        &format!("{here}.name"),
                        &Value::from(other),
                        "unsupported codec: expected transpose, bytes, gzip, zstd, crc32c or sharding_indexed",
                    ));
                }
            }
        }
        let Some(serializer) = serializer else {
            return Err(self.bad(
                field,
                value,
                "no array-to-bytes codec (bytes or sharding_indexed)",
            ));
        };
        let mut chain = CodecChain {
            chunk_shape: chunk_shape.to_vec(),
            element_size,
            transposes,
            serializer,
            compressors: Vec::new(),
        };
        // Each decompressor may produce at most what its input could hold when encoded.
        let mut len = chain.encoded_bound();
        for codec in compressors {
            chain.compressors.push((codec, len));
            len = chain.encoded_bound();
        }
        Ok(chain)
    }

    fn sharding(
        &self,
        config: Option<&Map<String, Value>>,
        here: &str,
        shard_shape: &[u64],
        data_type: DataType,
    ) -> Result<Sharding, ZarrError> {
        let field = |k: &str| format!("{here}.configuration.{k}");
        let get = |k: &str| config.and_then(|c| c.get(k));
        let inner_value = get("chunk_shape")
            .ok_or_else(|| self.bad(&field("chunk_shape"), &Value::Null, "missing"))?;
        let inner_shape = self.shape(inner_value, &field("chunk_shape"), true)?;
        if inner_shape.len() != shard_shape.len()
            || shard_shape
                .iter()
                .zip(&inner_shape)
                .any(|(s, i)| s % i != 0)
        {
            return Err(self.bad(
                &field("chunk_shape"),
                inner_value,
                &format!("must divide the shard shape {shard_shape:?}"),
            ));
        }
        let chunks_per_shard: Vec<u64> = shard_shape
            .iter()
            .zip(&inner_shape)
            .map(|(s, i)| s / i)
            .collect();
        let count: u64 = chunks_per_shard.iter().product();
        if count > MAX_INNER_CHUNKS {
            return Err(self.bad(
                &field("chunk_shape"),
                inner_value,
                &format!("{count} inner chunks per shard, more than {MAX_INNER_CHUNKS}"),
            ));
        }
        let codecs =
            get("codecs").ok_or_else(|| self.bad(&field("codecs"), &Value::Null, "missing"))?;
        let inner = self.chain(codecs, &field("codecs"), &inner_shape, data_type, false)?;

        let index_at_start = match get("index_location") {
            None => false,
            Some(Value::String(s)) if s == "end" => false,
            Some(Value::String(s)) if s == "start" => true,
            Some(other) => {
                return Err(self.bad(
                    &field("index_location"),
                    other,
                    "must be \"start\" or \"end\"",
                ));
            }
        };
        let index_field = field("index_codecs");
        let index_value =
            get("index_codecs").ok_or_else(|| self.bad(&index_field, &Value::Null, "missing"))?;
        let mut index_shape = chunks_per_shard.clone();
        index_shape.push(2);
        let index = self.chain(
            index_value,
            &index_field,
            &index_shape,
            DataType::UInt64,
            false,
        )?;
        let index_big_endian = match index.serializer {
            Serializer::Bytes { big_endian } if index.transposes.is_empty() => big_endian,
            _ => {
                return Err(self.bad(
                    &index_field,
                    index_value,
                    "unsupported: the index codecs must be bytes, optionally followed by crc32c",
                ));
            }
        };
        if index
            .compressors
            .iter()
            .any(|(c, _)| *c != BytesCodec::Crc32c)
        {
            return Err(self.bad(
                &index_field,
                index_value,
                "unsupported: the index codecs must be bytes, optionally followed by crc32c (the index size must be fixed)",
            ));
        }
        Ok(Sharding {
            inner_shape,
            chunks_per_shard,
            inner,
            index_big_endian,
            index_checksums: index.compressors.len(),
            index_at_start,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({
            "zarr_format": 3,
            "node_type": "array",
            "shape": [10, 10],
            "data_type": "int16",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [5, 5]}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": 0,
            "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
            "attributes": {}
        })
    }

    fn parse(v: &Value) -> Result<ArrayMetadata, ZarrError> {
        ArrayMetadata::parse("a/zarr.json", v.to_string().as_bytes())
    }

    fn error_of(edit: impl FnOnce(&mut Value)) -> String {
        let mut v = base();
        edit(&mut v);
        parse(&v).expect_err("must be refused").to_string()
    }

    #[test]
    fn the_base_document_parses() {
        let m = parse(&base()).unwrap();
        assert_eq!(m.shape, vec![10, 10]);
        assert_eq!(m.chunk_key_encoding.key(&[1, 2]), "c/1/2");
        assert_eq!(ChunkKeyEncoding::V2 { separator: '.' }.key(&[1, 2]), "1.2");
        assert_eq!(ChunkKeyEncoding::Default { separator: '.' }.key(&[]), "c");
    }

    #[test]
    fn errors_name_the_field_and_the_value() {
        type Edit = Box<dyn FnOnce(&mut Value)>;
        let cases: Vec<(Edit, &str, &str)> = vec![
            (
                Box::new(|v| v["data_type"] = json!("complex64")),
                "data_type",
                "\"complex64\"",
            ),
            (
                Box::new(|v| v["zarr_format"] = json!(2)),
                "zarr_format",
                "2",
            ),
            (
                Box::new(|v| v["chunk_grid"]["name"] = json!("rectilinear")),
                "chunk_grid.name",
                "rectilinear",
            ),
            (
                Box::new(|v| v["fill_value"] = json!(70000)),
                "fill_value",
                "70000",
            ),
            (
                Box::new(|v| v["codecs"] = json!([{"name": "blosc"}])),
                "codecs[0].name",
                "\"blosc\"",
            ),
            (
                Box::new(|v| v["codecs"][0]["configuration"]["endian"] = json!("middle")),
                "codecs[0].configuration.endian",
                "\"middle\"",
            ),
            (
                Box::new(|v| v["chunk_key_encoding"]["configuration"]["separator"] = json!("-")),
                "chunk_key_encoding.configuration.separator",
                "\"-\"",
            ),
            (
                Box::new(|v| v["chunk_grid"]["configuration"]["chunk_shape"] = json!([5, 0])),
                "chunk_grid.configuration.chunk_shape",
                "[5,0]",
            ),
            (
                Box::new(|v| {
                    v["chunk_grid"]["configuration"]["chunk_shape"] = json!([100000, 100000])
                }),
                "codecs",
                "[100000,100000]",
            ),
            (Box::new(|v| v["shape"] = json!("big")), "shape", "\"big\""),
            (
                Box::new(|v| v["node_type"] = json!("group")),
                "node_type",
                "\"group\"",
            ),
            (
                Box::new(|v| v["storage_transformers"] = json!([{"name": "x"}])),
                "storage_transformers",
                "x",
            ),
            (
                Box::new(
                    |v| v["codecs"] = json!([{"name": "transpose", "configuration": {"order": [0, 0]}}, {"name": "bytes", "configuration": {"endian": "little"}}]),
                ),
                "codecs[0].configuration.order",
                "[0,0]",
            ),
            (
                Box::new(
                    |v| v["codecs"] = json!([{"name": "sharding_indexed", "configuration": {"chunk_shape": [3, 5], "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}], "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}]}}]),
                ),
                "codecs[0].configuration.chunk_shape",
                "[3,5]",
            ),
            (
                Box::new(
                    |v| v["codecs"] = json!([{"name": "sharding_indexed", "configuration": {"chunk_shape": [5, 5], "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}], "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "gzip"}]}}]),
                ),
                "codecs[0].configuration.index_codecs",
                "gzip",
            ),
            (
                Box::new(
                    |v| v["codecs"] = json!([{"name": "sharding_indexed", "configuration": {"chunk_shape": [5, 5], "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}], "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}], "index_location": "middle"}}]),
                ),
                "codecs[0].configuration.index_location",
                "middle",
            ),
            (
                Box::new(
                    |v| v["codecs"] = json!([{"name": "gzip"}, {"name": "bytes", "configuration": {"endian": "little"}}]),
                ),
                "codecs[0].name",
                "gzip",
            ),
        ];
        for (edit, field, value) in cases {
            let err = error_of(edit);
            assert!(
                err.contains(&format!("`{field}`")),
                "{err} should name {field}"
            );
            assert!(err.contains(value), "{err} should show {value}");
        }
    }

    #[test]
    fn extensions_that_may_be_ignored_are() {
        let mut v = base();
        v["future_thing"] = json!({"must_understand": false});
        assert!(parse(&v).is_ok());
        v["other_thing"] = json!({"x": 1});
        assert!(parse(&v).unwrap_err().to_string().contains("other_thing"));
        assert!(
            ArrayMetadata::parse("k", b"{not json")
                .unwrap_err()
                .to_string()
                .contains("not valid JSON")
        );
    }
}
