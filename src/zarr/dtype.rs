//! Data types, element types and fill values.

use std::fmt;

use serde_json::Value;

/// A zarr v3 data type this reader supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    /// `bool`: one byte, 0 or 1.
    Bool,
    /// `int8`.
    Int8,
    /// `int16`.
    Int16,
    /// `int32`.
    Int32,
    /// `int64`.
    Int64,
    /// `uint8`.
    UInt8,
    /// `uint16`.
    UInt16,
    /// `uint32`.
    UInt32,
    /// `uint64`.
    UInt64,
    /// `float32`.
    Float32,
    /// `float64`.
    Float64,
}

impl DataType {
    /// The data type named `name` in `zarr.json`, if supported.
    pub fn from_name(name: &str) -> Option<DataType> {
        Some(match name {
            "bool" => DataType::Bool,
            "int8" => DataType::Int8,
            "int16" => DataType::Int16,
            "int32" => DataType::Int32,
            "int64" => DataType::Int64,
            "uint8" => DataType::UInt8,
            "uint16" => DataType::UInt16,
            "uint32" => DataType::UInt32,
            "uint64" => DataType::UInt64,
            "float32" => DataType::Float32,
            "float64" => DataType::Float64,
            _ => return None,
        })
    }

    /// The name used in `zarr.json`.
    pub fn name(self) -> &'static str {
        match self {
            DataType::Bool => "bool",
            DataType::Int8 => "int8",
            DataType::Int16 => "int16",
            DataType::Int32 => "int32",
            DataType::Int64 => "int64",
            DataType::UInt8 => "uint8",
            DataType::UInt16 => "uint16",
            DataType::UInt32 => "uint32",
            DataType::UInt64 => "uint64",
            DataType::Float32 => "float32",
            DataType::Float64 => "float64",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DataType::Bool | DataType::Int8 | DataType::UInt8 => 1,
            DataType::Int16 | DataType::UInt16 => 2,
            DataType::Int32 | DataType::UInt32 | DataType::Float32 => 4,
            DataType::Int64 | DataType::UInt64 | DataType::Float64 => 8,
        }
    }

    /// Parses `fill_value` for this data type into its little-endian bytes, or says why not.
    pub(crate) fn parse_fill(self, value: &Value) -> Result<Vec<u8>, String> {
        let int = |min: i128, max: i128| -> Result<i128, String> {
            let v = match value {
                Value::Number(n) => n
                    .as_i64()
                    .map(i128::from)
                    .or_else(|| n.as_u64().map(i128::from)),
                _ => None,
            };
            match v {
                Some(v) if (min..=max).contains(&v) => Ok(v),
                Some(_) => Err(format!("out of range for {}", self.name())),
                None => Err(format!("not an integer for {}", self.name())),
            }
        };
        Ok(match self {
            DataType::Bool => match value {
                Value::Bool(b) => vec![u8::from(*b)],
                _ => return Err("not true or false".into()),
            },
            DataType::Int8 => (int(i8::MIN.into(), i8::MAX.into())? as i8)
                .to_le_bytes()
                .to_vec(),
            DataType::Int16 => (int(i16::MIN.into(), i16::MAX.into())? as i16)
                .to_le_bytes()
                .to_vec(),
            DataType::Int32 => (int(i32::MIN.into(), i32::MAX.into())? as i32)
                .to_le_bytes()
                .to_vec(),
            DataType::Int64 => (int(i64::MIN.into(), i64::MAX.into())? as i64)
                .to_le_bytes()
                .to_vec(),
            DataType::UInt8 => (int(0, u8::MAX.into())? as u8).to_le_bytes().to_vec(),
            DataType::UInt16 => (int(0, u16::MAX.into())? as u16).to_le_bytes().to_vec(),
            DataType::UInt32 => (int(0, u32::MAX.into())? as u32).to_le_bytes().to_vec(),
            DataType::UInt64 => (int(0, u64::MAX.into())? as u64).to_le_bytes().to_vec(),
            DataType::Float32 => match float_fill(value, 4)? {
                FloatFill::Value(v) => (v as f32).to_le_bytes().to_vec(),
                FloatFill::Bits(b) => (b as u32).to_le_bytes().to_vec(),
            },
            DataType::Float64 => match float_fill(value, 8)? {
                FloatFill::Value(v) => v.to_le_bytes().to_vec(),
                FloatFill::Bits(b) => b.to_le_bytes().to_vec(),
            },
        })
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

enum FloatFill {
    Value(f64),
    Bits(u64),
}

/// A float fill value: a JSON number, `"NaN"`, `"Infinity"`, `"-Infinity"`, or the raw bits
/// as a hex string (`"0x7fc00000"`), as the zarr v3 spec allows.
fn float_fill(value: &Value, size: usize) -> Result<FloatFill, String> {
    match value {
        Value::Number(n) => n
            .as_f64()
            .map(FloatFill::Value)
            .ok_or_else(|| "not a number".to_string()),
        Value::String(s) => match s.as_str() {
            "NaN" => Ok(FloatFill::Value(f64::NAN)),
            "Infinity" => Ok(FloatFill::Value(f64::INFINITY)),
            "-Infinity" => Ok(FloatFill::Value(f64::NEG_INFINITY)),
            hex if hex.starts_with("0x") && hex.len() == 2 + 2 * size => {
                u64::from_str_radix(&hex[2..], 16)
                    .map(FloatFill::Bits)
                    .map_err(|_| "not a hex bit pattern".to_string())
            }
            _ => Err("not a number, \"NaN\", \"Infinity\", \"-Infinity\" or hex bits".into()),
        },
        _ => Err("not a number or string".into()),
    }
}

mod sealed {
    pub trait Sealed {}
}

/// An element type an array can be read into: `bool`, `i8`..`i64`, `u8`..`u64`, `f32`,
/// `f64`, each matching exactly one [`DataType`].
pub trait Element:
    sealed::Sealed + Copy + Default + Send + Sync + fmt::Debug + PartialEq + 'static
{
    /// The zarr data type this element type reads.
    const DATA_TYPE: DataType;

    /// The element encoded in `bytes` (exactly [`DataType::size`] bytes).
    fn from_bytes(bytes: &[u8], big_endian: bool) -> Self;

    /// Whether `self` has the same bits as `other` (NaNs with equal bits are equal).
    fn same_bits(&self, other: &Self) -> bool;
}

macro_rules! numeric_element {
    ($t:ty, $dt:expr, $bits:expr) => {
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const DATA_TYPE: DataType = $dt;
            #[inline]
            fn from_bytes(bytes: &[u8], big_endian: bool) -> Self {
                let mut raw = [0u8; std::mem::size_of::<$t>()];
                raw.copy_from_slice(bytes);
                if big_endian {
                    <$t>::from_be_bytes(raw)
                } else {
                    <$t>::from_le_bytes(raw)
                }
            }
            fn same_bits(&self, other: &Self) -> bool {
                #[allow(clippy::redundant_closure_call)]
                ($bits)(self, other)
            }
        }
    };
}

numeric_element!(i8, DataType::Int8, |a: &i8, b: &i8| a == b);
numeric_element!(i16, DataType::Int16, |a: &i16, b: &i16| a == b);
numeric_element!(i32, DataType::Int32, |a: &i32, b: &i32| a == b);
numeric_element!(i64, DataType::Int64, |a: &i64, b: &i64| a == b);
numeric_element!(u8, DataType::UInt8, |a: &u8, b: &u8| a == b);
numeric_element!(u16, DataType::UInt16, |a: &u16, b: &u16| a == b);
numeric_element!(u32, DataType::UInt32, |a: &u32, b: &u32| a == b);
numeric_element!(u64, DataType::UInt64, |a: &u64, b: &u64| a == b);
numeric_element!(f32, DataType::Float32, |a: &f32, b: &f32| a.to_bits()
    == b.to_bits());
numeric_element!(f64, DataType::Float64, |a: &f64, b: &f64| a.to_bits()
    == b.to_bits());

impl sealed::Sealed for bool {}
impl Element for bool {
    const DATA_TYPE: DataType = DataType::Bool;
    fn from_bytes(bytes: &[u8], _big_endian: bool) -> Self {
        bytes.first().is_some_and(|b| *b != 0)
    }
    fn same_bits(&self, other: &Self) -> bool {
        self == other
    }
}

/// Decodes `bytes` (a whole number of elements) into elements.
pub(crate) fn decode_elements<T: Element>(bytes: &[u8], big_endian: bool) -> Vec<T> {
    let size = T::DATA_TYPE.size();
    // One loop per byte order, each with a constant order and size, so the conversion
    // compiles to a vectorized copy (a per-element branch and call halved the read rate).
    if big_endian {
        bytes
            .chunks_exact(size)
            .map(|b| T::from_bytes(b, true))
            .collect()
    } else {
        bytes
            .chunks_exact(size)
            .map(|b| T::from_bytes(b, false))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fill_values_follow_the_spec() {
        let f = |dt: DataType, v: Value| dt.parse_fill(&v);
        assert_eq!(f(DataType::UInt8, json!(7)).unwrap(), vec![7]);
        assert_eq!(
            f(DataType::Int16, json!(-2)).unwrap(),
            (-2i16).to_le_bytes()
        );
        assert!(f(DataType::UInt8, json!(256)).is_err());
        assert!(f(DataType::Int8, json!(1.5)).is_err());
        assert_eq!(
            f(DataType::UInt64, json!(u64::MAX)).unwrap(),
            u64::MAX.to_le_bytes()
        );
        let nan = f(DataType::Float32, json!("NaN")).unwrap();
        assert!(f32::from_le_bytes(nan.try_into().unwrap()).is_nan());
        let bits = f(DataType::Float32, json!("0x7fc00001")).unwrap();
        assert_eq!(bits, 0x7fc0_0001u32.to_le_bytes());
        assert!(
            f(DataType::Float64, json!("0x7fc00001")).is_err(),
            "wrong width"
        );
        assert_eq!(f(DataType::Bool, json!(true)).unwrap(), vec![1]);
        assert!(f(DataType::Bool, json!(1)).is_err());
    }

    #[test]
    fn elements_decode_both_endians() {
        let be = [0x01u8, 0x02, 0x03, 0x04];
        assert_eq!(decode_elements::<u16>(&be, true), vec![0x0102, 0x0304]);
        assert_eq!(decode_elements::<u16>(&be, false), vec![0x0201, 0x0403]);
        assert_eq!(
            decode_elements::<f32>(&1.5f32.to_be_bytes(), true),
            vec![1.5]
        );
    }
}
