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
    // The same stream in short reads (their size picked by the input's length), so that
    // window refills fall inside headers, records and member data: the walk must not change.
    let read_size = [1, 3, 100, 511, 512, 513, 4097][data.len() % 7];
    let chunked = tar::scan_stream(Chunked { data, read_size }, &|_| true, limits);
    match (&streamed, &chunked) {
        (Ok(a), Ok(b)) => {
            let mut a_members: Vec<_> = a.index.members().collect();
            let mut b_members: Vec<_> = b.index.members().collect();
            a_members.sort_by_key(|(name, _)| name.to_string());
            b_members.sort_by_key(|(name, _)| name.to_string());
            assert_eq!(a_members, b_members);
            assert_eq!(a.index.damage, b.index.damage);
            assert_eq!(a.contents, b.contents);
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        (a, b) => panic!("one read: {:?}, short reads: {:?}", a.is_ok(), b.is_ok()),
    }
    if let Ok(streamed) = streamed {
        for (name, content) in &streamed.contents {
            let member = streamed
                .index
                .get(name)
                .expect("content of an indexed member");
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

/// A reader that returns at most `read_size` bytes per read.
struct Chunked<'a> {
    data: &'a [u8],
    read_size: usize,
}

impl std::io::Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.read_size.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}
