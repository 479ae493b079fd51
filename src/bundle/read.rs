//! Reading a bundle's tar stream member by member, with bounded allocations.
//!
//! Framing, header checksums and padding are `astral-tokio-tar`'s (its raw entries); the
//! extension headers (PAX records, GNU long names) are read here, so that every allocation
//! is checked against a cap before it is made.

use std::collections::HashMap;
use std::io;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_tar::{Archive, Entry};

/// The most bytes of PAX records or of a GNU long name accepted for one member.
const MAX_EXTENSION_BYTES: u64 = 1 << 20;

/// A completion-order member's group name: `getmany:<request index>`.
const INDEX_PREFIX: &[u8] = b"getmany:";

/// A member of the stream: its name, bytes, PAX records, and the request index its group
/// name carries (`getmany:<index>`, completion-order bundles of a getmany server).
#[derive(Debug)]
pub(crate) struct TarMember {
    pub name: String,
    pub data: Bytes,
    pub pax: HashMap<String, String>,
    pub index: Option<usize>,
}

/// Members of a tar stream, one at a time.
pub(crate) struct TarMembers<R: AsyncRead + Unpin> {
    entries: futures::stream::BoxStream<'static, io::Result<Entry<Archive<R>>>>,
    max_member_bytes: u64,
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Reads exactly `size` bytes of `entry` into one buffer allocated once, at that size: the
/// caller has checked the declared `size` against its cap. (Growing the buffer as bytes
/// arrive copied a large member several times over.) `what` names the bytes in the error.
async fn read_exactly<R: AsyncRead + Unpin>(
    entry: &mut Entry<Archive<R>>,
    size: u64,
    what: impl Fn() -> String,
) -> io::Result<BytesMut> {
    let len = usize::try_from(size).map_err(|_| invalid(format!("{} is too large", what())))?;
    let mut buf = BytesMut::with_capacity(len);
    while buf.len() < len {
        // Reads straight into the spare capacity (no zeroing); the entry ends at its size.
        if entry.read_buf(&mut buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} ended after {} of {size} bytes", what(), buf.len()),
            ));
        }
    }
    Ok(buf)
}

/// Parses PAX records: `"<len> <key>=<value>\n"`, repeated.
fn parse_pax(mut data: &[u8], out: &mut HashMap<String, String>) -> io::Result<()> {
    while !data.is_empty() {
        let space = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| invalid("a PAX record has no length"))?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid("a PAX record's length is not a number"))?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(invalid("a PAX record's length does not match its contents"));
        }
        let record = &data[space + 1..len - 1];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| invalid("a PAX record has no '='"))?;
        let key = String::from_utf8_lossy(&record[..eq]).into_owned();
        let value = String::from_utf8_lossy(&record[eq + 1..]).into_owned();
        out.insert(key, value);
        data = &data[len..];
    }
    Ok(())
}

impl<R: AsyncRead + Unpin + Send + 'static> TarMembers<R> {
    /// Reads `archive`, refusing members declared larger than `max_member_bytes`.
    pub fn new(archive: &mut Archive<R>, max_member_bytes: u64) -> io::Result<Self> {
        Ok(TarMembers {
            entries: archive.entries_raw()?.boxed(),
            max_member_bytes,
        })
    }

    /// The next file member, or `None` at the end of the archive.
    pub async fn next(&mut self) -> io::Result<Option<TarMember>> {
        let mut pax = HashMap::new();
        let mut long_name: Option<Vec<u8>> = None;
        let mut pending = false;
        loop {
            let Some(entry) = self.entries.next().await else {
                if pending {
                    return Err(invalid("the archive ends after an extension header"));
                }
                return Ok(None);
            };
            let mut entry = entry?;
            let header = entry.header();
            let kind = header.entry_type();
            let size = header.raw_entry_size()?;
            if kind.is_pax_local_extensions()
                || kind.is_pax_global_extensions()
                || kind.is_gnu_longname()
            {
                if size > MAX_EXTENSION_BYTES {
                    return Err(invalid(format!(
                        "an extension header declares {size} bytes (at most {MAX_EXTENSION_BYTES})"
                    )));
                }
                let data =
                    read_exactly(&mut entry, size, || "an extension header".to_string()).await?;
                if kind.is_pax_local_extensions() {
                    parse_pax(&data, &mut pax)?;
                    pending = true;
                } else if kind.is_gnu_longname() {
                    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
                    long_name = Some(data[..end].to_vec());
                    pending = true;
                }
                continue;
            }
            if !kind.is_file() {
                // Directories, links and the like carry no object.
                pax.clear();
                long_name = None;
                pending = false;
                continue;
            }
            if let Some(declared) = pax.get("size")
                && declared.parse::<u64>().ok() != Some(size)
            {
                return Err(invalid(
                    "a PAX size record that differs from the header's size is not supported",
                ));
            }
            let name = match (pax.get("path"), &long_name) {
                (Some(path), _) => path.clone(),
                (None, Some(long)) => String::from_utf8_lossy(long).into_owned(),
                (None, None) => String::from_utf8_lossy(&header.path_bytes()).into_owned(),
            };
            if size > self.max_member_bytes {
                return Err(invalid(format!(
                    "member {name:?} declares {size} bytes, more than the limit of {}",
                    self.max_member_bytes
                )));
            }
            let index = header
                .groupname_bytes()
                .and_then(|group| group.strip_prefix(INDEX_PREFIX))
                .and_then(|digits| std::str::from_utf8(digits).ok())
                .and_then(|digits| digits.parse().ok());
            let data = read_exactly(&mut entry, size, || format!("member {name:?}")).await?;
            return Ok(Some(TarMember {
                name,
                data: data.freeze(),
                pax,
                index,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_parse_and_reject_nonsense() {
        let mut out = HashMap::new();
        parse_pax(b"9 path=a\n16 GETMANY.x=yz\n", &mut out).unwrap();
        assert_eq!(out["path"], "a");
        assert_eq!(out["GETMANY.x"], "yz");
        for bad in [&b"99 path=a\n"[..], b"x path=a\n", b"10 patha\n", b"3 \n"] {
            assert!(parse_pax(bad, &mut HashMap::new()).is_err(), "{bad:?}");
        }
    }
}
