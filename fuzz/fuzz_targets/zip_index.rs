//! Fuzzes the zip index builder and member decoding (local headers, stored, deflate under
//! the size caps, CRC checks).
#![no_main]

use bytes::Bytes;
use getmany::archive::{ArchiveLimits, zip};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = ArchiveLimits {
        max_member_size: 1 << 20,
        max_metadata: 64 << 10,
        max_index_bytes: 1 << 20,
        max_members: 10_000,
    };
    let data = Bytes::copy_from_slice(data);
    if let Ok(members) = zip::extract_all(&data, &limits) {
        for (_, content) in members {
            if let Ok(content) = content {
                assert!(content.len() as u64 <= limits.max_member_size);
            }
        }
    }
    // The tail parser alone, on every suffix length a reader might use.
    for len in [22usize, 100, 4096] {
        let len = len.min(data.len());
        let _ = zip::parse_tail(&data[data.len() - len..], data.len() as u64, &limits);
    }
});
