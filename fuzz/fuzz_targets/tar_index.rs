//! Fuzzes the tar index builder: random access over a buffer, and the forward-only stream
//! walker used for `.tar.gz`, which must agree with it.
#![no_main]

use getmany::archive::{ArchiveLimits, tar};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Small caps so hostile sizes hit them quickly.
    let limits = ArchiveLimits {
        max_member_size: 1 << 20,
        max_metadata: 64 << 10,
        max_index_bytes: 1 << 20,
        max_members: 10_000,
    };
    let index = tar::index_tar(data, limits);
    for (name, member) in index.members() {
        // Every member the index keeps lies inside the archive, unless the index says
        // which one does not.
        let end = member.offset.checked_add(member.stored_size);
        if end.is_none_or(|end| end > data.len() as u64) {
            let damage = index.damage.as_deref().unwrap_or("");
            assert!(damage.contains("past the end"), "{name:?}: {damage}");
        }
    }
    let streamed = tar::scan_stream(data, &|_| true, limits);
    if let Ok(streamed) = streamed {
        for (name, content) in &streamed.contents {
            let member = streamed.index.get(name).expect("content of an indexed member");
            assert_eq!(content.len() as u64, member.size);
            if let Some(m) = index.get(name) {
                if m.offset + m.size <= data.len() as u64 {
                    let start = m.offset as usize;
                    assert_eq!(&content[..], &data[start..start + m.size as usize]);
                }
            }
        }
    }
});
