//! Criterion benchmarks of the forward-only tar walk that reads `.tar.gz` archives
//! ([`scan_stream`], as `ArchiveStore` runs it: a `MultiGzDecoder` over the whole object),
//! from in-memory archives written by the `tar` and `flate2` crates (no I/O).
//!
//! Each shape is walked four ways: plain tar or gzip-compressed, keeping the content of
//! every member (a request for all of them) or of none (the index alone). Throughput is in
//! bytes of the decompressed tar.

use std::io::Write;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use getmany::archive::ArchiveLimits;
use getmany::archive::tar::scan_stream;

/// Member content that compresses like text (about 2:1), so inflating costs what it does
/// on real data: neither a run of one byte nor incompressible noise.
fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            b"etaoinshrdlucmfw"[(state % 16) as usize]
        })
        .collect()
}

fn tar_archive(members: usize, member_bytes: usize) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for i in 0..members {
        let data = content(member_bytes, i as u64);
        let mut header = tar::Header::new_ustar();
        header.set_size(member_bytes as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, format!("shard/{i:06}.bin"), &data[..])
            .expect("tar in memory");
    }
    builder.into_inner().expect("tar in memory")
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(data).expect("gzip in memory");
    encoder.finish().expect("gzip in memory")
}

fn tar_stream(c: &mut Criterion) {
    let limits = ArchiveLimits::default();
    let mut group = c.benchmark_group("tar stream");
    group.sample_size(20);
    for (members, member_bytes, shape) in [
        (10_000, 1024, "10,000 members of 1 KiB"),
        (1_000, 64 * 1024, "1,000 members of 64 KiB"),
    ] {
        let tar = tar_archive(members, member_bytes);
        let tgz = gzip(&tar);
        // The walk must find every member, and keep every one when asked to.
        let check =
            scan_stream(MultiGzDecoder::new(&tgz[..]), &|_| true, limits).expect("a valid tar.gz");
        assert_eq!(check.index.len(), members);
        assert_eq!(check.contents.len(), members);
        assert!(check.index.damage.is_none());

        group.throughput(Throughput::Bytes(tar.len() as u64));
        group.bench_function(BenchmarkId::new("tar, keep all", shape), |b| {
            b.iter(|| scan_stream(std::hint::black_box(&tar[..]), &|_| true, limits))
        });
        group.bench_function(BenchmarkId::new("tar, index only", shape), |b| {
            b.iter(|| scan_stream(std::hint::black_box(&tar[..]), &|_| false, limits))
        });
        group.bench_function(BenchmarkId::new("tar.gz, keep all", shape), |b| {
            b.iter(|| {
                let decoder = MultiGzDecoder::new(std::hint::black_box(&tgz[..]));
                scan_stream(decoder, &|_| true, limits)
            })
        });
        group.bench_function(BenchmarkId::new("tar.gz, index only", shape), |b| {
            b.iter(|| {
                let decoder = MultiGzDecoder::new(std::hint::black_box(&tgz[..]));
                scan_stream(decoder, &|_| false, limits)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, tar_stream);
criterion_main!(benches);
