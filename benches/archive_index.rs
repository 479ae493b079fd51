//! Criterion benchmarks of the archive index builders (no I/O): a tar and a zip of 10,000
//! members, built in memory with the `tar` and `zip` crates.

use std::io::{Cursor, Write};

use criterion::{Criterion, criterion_group, criterion_main};
use getmany::archive::ArchiveLimits;
use getmany::archive::{tar::index_tar, zip::index_zip};

const MEMBERS: usize = 10_000;
const MEMBER_BYTES: usize = 1024;

fn tar_archive() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let data = vec![7u8; MEMBER_BYTES];
    for i in 0..MEMBERS {
        let mut header = tar::Header::new_ustar();
        header.set_size(MEMBER_BYTES as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, format!("shard/{i:06}.bin"), &data[..])
            .expect("tar in memory");
    }
    builder.into_inner().expect("tar in memory")
}

fn zip_archive() -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let data = vec![7u8; MEMBER_BYTES];
    for i in 0..MEMBERS {
        writer
            .start_file(format!("shard/{i:06}.bin"), options)
            .expect("zip in memory");
        writer.write_all(&data).expect("zip in memory");
    }
    writer.finish().expect("zip in memory").into_inner()
}

fn archive_index(c: &mut Criterion) {
    let tar = tar_archive();
    let zip = zip_archive();
    let limits = ArchiveLimits::default();
    let mut group = c.benchmark_group("archive index");
    group.sample_size(20);
    group.bench_function("tar, 10,000 members of 1 KiB", |b| {
        b.iter(|| index_tar(std::hint::black_box(&tar), limits))
    });
    group.bench_function("zip, 10,000 members of 1 KiB", |b| {
        b.iter(|| index_zip(std::hint::black_box(&zip), &limits).expect("valid zip"))
    });
    group.finish();
}

criterion_group!(benches, archive_index);
criterion_main!(benches);
